#!/bin/sh
# scenario-guest-diagnostics.sh RUN_DIR, run on the hypervisor node when a
# scenario fails: whether the guest VM's QEMU (its files in RUN_DIR) runs,
# its console's end, the map's requests in flight, the kernel's last lines.
run=$1
echo "qemu pid $(cat "$run/qemu.pid" 2>/dev/null)"
if kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null; then
  echo 'qemu running'
else
  echo 'qemu EXITED: the guest reset or powered off (QEMU runs it with -no-reboot)'
fi
# The whole command line of QEMU: BusyBox pgrep prints only names.
# shellcheck disable=SC2009
ps | grep '[q]emu-system'
echo '--- qemu.log'; cat "$run/qemu.log"
echo '--- guest console'; tail -n 30 "$run/console.log"
echo '--- map in flight'; cat /sys/block/dm-0/inflight
echo '--- hypervisor dmesg'; dmesg | tail -n 40
true
