#!/bin/sh
# scenario-ssh.sh KEY_B64 WRONG_KEY_B64 KNOWN_HOSTS_B64 ADDRESS..., run on
# the hypervisor node: operator access over SSH. KEY_B64 and WRONG_KEY_B64
# are dropbear private keys (base64), KNOWN_HOSTS_B64 the known_hosts file
# that pins every node's host key. For each ADDRESS one line
# `login ADDRESS ok HOSTNAME` or `login ADDRESS failed CODE: OUTPUT` with
# the key, and one line `wrong-key ADDRESS refused|accepted` with the other.
key_b64=$1 wrong_b64=$2 known_b64=$3
shift 3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
umask 077
printf '%s' "$key_b64" | base64 -d >"$dir/key"
printf '%s' "$wrong_b64" | base64 -d >"$dir/wrong"
# dbclient reads $HOME/.ssh/known_hosts: a home of its own, so that the
# node's /root is left as the image has it.
export HOME="$dir"
mkdir "$dir/.ssh"
printf '%s' "$known_b64" | base64 -d >"$dir/.ssh/known_hosts"
for address in "$@"; do
  # No -y: the host key must be the pinned one. stdin is not a terminal,
  # so dbclient asks for no password and allocates no pty.
  if output=$(timeout 30 dbclient -i "$dir/key" "root@$address" hostname </dev/null 2>&1); then
    echo "login $address ok $(echo "$output" | tail -n 1)"
  else
    echo "login $address failed $?: $(echo "$output" | tr '\n' ' ')"
  fi
  if timeout 30 dbclient -i "$dir/wrong" "root@$address" hostname </dev/null >/dev/null 2>&1; then
    echo "wrong-key $address accepted"
  else
    echo "wrong-key $address refused"
  fi
done
