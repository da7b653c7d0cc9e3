#!/bin/sh
# scenario-guest-diagnostics.sh RUN_DIR, run on the hypervisor node when a
# scenario fails: this node's uptime (a node that reset itself starts over,
# and RUN_DIR, in RAM, is empty then), what the node says about its VMs and
# whether the guest VM's QEMU (its files in RUN_DIR) runs, its console's end,
# the map's requests in flight, the kernel's last lines.
run=$1
echo "hypervisor uptime $(cut -d' ' -f1 /proc/uptime) s"
applbuild-vm list
pid=$(cat "$run/pid" 2>/dev/null)
if [ -z "$pid" ]; then
  echo "no QEMU pid: the VM is not running (state $(cat "$run/state" 2>/dev/null || echo MISSING: did the node reset?))"
elif kill -0 "$pid" 2>/dev/null; then
  echo "qemu pid $pid running, restarts $(cat "$run/restarts")"
fi
# The whole command line of QEMU: BusyBox pgrep prints only names.
# shellcheck disable=SC2009
ps | grep '[q]emu-system'
echo '--- qemu.log'; cat "$run/qemu.log"
echo '--- guest console'; tail -n 30 "$run/console.log"
echo '--- map in flight'; cat /sys/block/dm-0/inflight
echo '--- hypervisor dmesg'; dmesg | tail -n 40
true
