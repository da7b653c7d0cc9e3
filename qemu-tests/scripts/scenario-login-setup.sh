#!/bin/sh
# scenario-login-setup.sh TARGET PORTAL IFACE [iface|node KEY VALUE]...,
# run on the hypervisor node: creates iSCSI iface IFACE bound to br0 and
# its node record for TARGET through PORTAL, then applies each update to
# the iface or to the node record. Stops at the first failure.
target=$1 portal=$2 iface=$3
shift 3
iscsiadm -m iface -I "$iface" --op=new >/dev/null &&
  iscsiadm -m iface -I "$iface" --op=update -n iface.net_ifacename -v br0 >/dev/null || exit 1
created=false
while [ $# -ge 3 ]; do
  if [ "$1" = node ] && [ "$created" = false ]; then
    iscsiadm -m node -o new -T "$target" -p "$portal" -I "$iface" >/dev/null || exit 1
    created=true
  fi
  case $1 in
    iface) iscsiadm -m iface -I "$iface" --op=update -n "$2" -v "$3" >/dev/null || exit 1 ;;
    node) iscsiadm -m node -T "$target" -p "$portal" -I "$iface" -o update -n "$2" -v "$3" >/dev/null || exit 1 ;;
    *) echo "unknown update kind $1" >&2; exit 2 ;;
  esac
  shift 3
done
[ "$created" = true ] || iscsiadm -m node -o new -T "$target" -p "$portal" -I "$iface" >/dev/null
