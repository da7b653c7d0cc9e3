#!/bin/sh
# scenario-console-password.sh PASSWORD, run on a node: whether PASSWORD is
# root's console password. BusyBox mkpasswd hashes it with the salt of
# root's /etc/shadow entry, as BusyBox login does; prints `match` or
# `mismatch`.
hash=$(grep '^root:' /etc/shadow | cut -d: -f2)
salt=$(echo "$hash" | cut -d'$' -f3)
if [ -n "$salt" ] && [ "$(mkpasswd -m sha512 -S "$salt" "$1")" = "$hash" ]; then
  echo match
else
  echo mismatch
fi
