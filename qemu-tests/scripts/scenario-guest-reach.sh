#!/bin/sh
# scenario-guest-reach.sh NAMESPACE PDU_BASE64 PORTAL... -- ADDRESS...,
# run on the hypervisor node: what a guest NIC on br0 (the veth of network
# namespace NAMESPACE, or the node itself when NAMESPACE is `-`) reaches.
# For each PORTAL (ADDRESS:PORT) one line `tcp PORTAL open|closed` (a TCP
# connect, 3 s) and one line `login PORTAL answer=XX` with the first byte
# the portal sent back for the iSCSI login request PDU_BASE64 (empty: no
# answer within 3 s; 23 is a Login Response); for each ADDRESS after `--`
# one line `ping ADDRESS up|down`.
ns=$1 pdu=$2
shift 2
run() {
  if [ "$ns" = - ]; then
    "$@"
  else
    ip netns exec "$ns" "$@"
  fi
}
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  portal=$1 address=${1%:*} port=${1##*:}
  shift
  # BusyBox nc has no -z: it exits 1 when the connect fails or times out
  # (-w), else once the portal closes the connection nc half-closed.
  run timeout 6 nc -w 3 "$address" "$port" </dev/null >/dev/null 2>&1
  if [ $? -eq 1 ]; then
    echo "tcp $portal closed"
  else
    echo "tcp $portal open"
  fi
  # stdin stays open for 2 s, so nc waits for the answer.
  answer=$({ printf '%s' "$pdu" | base64 -d; sleep 2; } | run nc -w 3 "$address" "$port" 2>/dev/null |
    head -c 1 | od -An -tx1 | tr -d ' \n')
  echo "login $portal answer=$answer"
done
[ "${1:-}" = -- ] && shift
for address in "$@"; do
  if run ping -c 1 -W 2 "$address" >/dev/null 2>&1; then
    echo "ping $address up"
  else
    echo "ping $address down"
  fi
done
