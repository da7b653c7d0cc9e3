#!/bin/sh
# Starts the S6 guest inside the hypervisor node (run there through the
# guest agent). Its kernel and initrd are copied from the multipath map's
# partitions into RAM (QEMU maps its -initrd file, which a block device does
# not allow), its tap becomes a port of br0, and QEMU runs in the background
# with its own messages in qemu.log.
# Usage: guest-start.sh RUN_DIR TAP KERNEL_PARTITION INITRD_PARTITION QEMU_COMMAND
# QEMU_COMMAND is one shell-quoted line (rendered by applbuild-vm's VmSpec).
set -e
run_dir=$1
tap=$2
kernel=$3
initrd=$4
qemu_command=$5
mkdir -p "$run_dir"
: > "$run_dir/console.log"
ip tuntap add dev "$tap" mode tap
ip link set "$tap" master br0
ip link set "$tap" up
cat "$kernel" > "$run_dir/vmlinuz"
cat "$initrd" > "$run_dir/initrd.img"
# A subshell: dash keeps the caller's output open for a backgrounded eval.
(eval "setsid $qemu_command") < /dev/null > "$run_dir/qemu.log" 2>&1 &
