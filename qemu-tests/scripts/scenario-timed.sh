#!/bin/sh
# scenario-timed.sh COMMAND [ARG]..., run in the guest VM: runs COMMAND
# (its standard error dropped) and prints the uptime before and after it,
# "START END"; exits 1, printing nothing, if COMMAND fails.
t0=$(cut -d' ' -f1 /proc/uptime)
"$@" 2>/dev/null || exit 1
t1=$(cut -d' ' -f1 /proc/uptime)
echo "$t0 $t1"
