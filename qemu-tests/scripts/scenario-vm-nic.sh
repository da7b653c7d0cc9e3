#!/bin/sh
# scenario-vm-nic.sh NAMESPACE ADDRESS/PREFIX, run on the hypervisor node:
# the stand-in for a guest NIC on br0, a veth pair whose far end sits in
# network namespace NAMESPACE with ADDRESS. Does nothing if it exists.
ns=$1 address=$2
ip netns list | grep -q "^$ns\b" && exit 0
ip netns add "$ns" &&
  ip link add "$ns-host" type veth peer name "$ns-guest" &&
  ip link set "$ns-guest" netns "$ns" &&
  ip link set "$ns-host" master br0 && ip link set "$ns-host" up &&
  ip -n "$ns" link set lo up &&
  ip -n "$ns" addr add "$address" dev "$ns-guest" &&
  ip -n "$ns" link set "$ns-guest" up
