#!/bin/sh
# scenario-login-cleanup.sh TARGET PORTAL IFACE, run on the hypervisor
# node: logs out of the session through IFACE (should there be one), then
# deletes its node record and the iface. Never fails.
target=$1 portal=$2 iface=$3
iscsiadm -m node -T "$target" -p "$portal" -I "$iface" --logout >/dev/null 2>&1
iscsiadm -m node -T "$target" -p "$portal" -I "$iface" -o delete >/dev/null 2>&1
iscsiadm -m iface -I "$iface" --op=delete >/dev/null 2>&1
true
