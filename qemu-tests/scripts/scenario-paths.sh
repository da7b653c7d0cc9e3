#!/bin/sh
# Run on the hypervisor node: one line per multipath path, "DEV DM-STATE
# CHECKER-STATE IFACE PORTAL", the iSCSI iface and portal read from the
# session the path's disk belongs to ("?" when it has none).
multipathd show paths raw format "%d %t %T" 2>/dev/null | while read -r dev dm chk; do
  s=$(readlink -f "/sys/block/$dev/device" 2>/dev/null | grep -o 'session[0-9]*' | head -n1)
  iface=$(cat "/sys/class/iscsi_session/$s/ifacename" 2>/dev/null)
  portal=$(cat "/sys/class/iscsi_connection/connection${s#session}:0/persistent_address" 2>/dev/null)
  echo "$dev $dm $chk ${iface:-?} ${portal:-?}"
done
