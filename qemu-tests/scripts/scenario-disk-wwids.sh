#!/bin/sh
# Run on the hypervisor node: one line per SCSI disk, "NAME WWID SECTORS".
# The WWID is scsi_id's when it answers, else sysfs's (`naa.6…` there is
# `36…` for multipath).
for d in /sys/block/sd*; do
  [ -e "$d" ] || continue
  n=${d##*/}
  w=$(/usr/lib/udev/scsi_id -g -u -d "/dev/$n" 2>/dev/null)
  [ -n "$w" ] || w=$(sed 's/^naa\./3/' "$d/device/wwid")
  echo "$n $w $(cat "$d/size")"
done
