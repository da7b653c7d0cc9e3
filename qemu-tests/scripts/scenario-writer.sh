#!/bin/sh
# scenario-writer.sh DEV PATTERN MIB STOPFILE LOG, run in the guest VM:
# rewrites PATTERN onto DEV in 1 MiB direct writes until STOPFILE exists
# (checked after each full pass), logging "UPTIME PASS MIB ok|FAIL" per
# write to LOG (the output of a dd that failed to LOG.err, so that file
# holds only errors: BusyBox dd reports every transfer on stderr) and
# "DONE UPTIME" at the end.
dev=$1 pat=$2 mib=$3 stop=$4 log=$5
# The kicker: one 4 KiB direct read of DEV after another, a second apart.
# A nested guest on TCG's emulated SVM now and then loses a virtio
# notification, leaving a write in flight forever; the next request on the
# same queue carries the lost one along (docs/acceptance.md, "The nested
# guest's lost notifications").
( while :; do dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; sleep 1; done ) &
kicker=$!
pass=0
while :; do
  i=0
  while [ "$i" -lt "$mib" ]; do
    if out=$(dd if="$pat" of="$dev" bs=1M count=1 skip="$i" seek="$i" oflag=direct conv=notrunc,fsync 2>&1); then
      s=ok
    else
      s=FAIL
      echo "$out" >> "$log.err"
    fi
    echo "$(cut -d' ' -f1 /proc/uptime) $pass $i $s" >> "$log"
    i=$((i+1))
  done
  pass=$((pass+1))
  [ -e "$stop" ] && break
done
kill "$kicker"
echo "DONE $(cut -d' ' -f1 /proc/uptime)" >> "$log"
