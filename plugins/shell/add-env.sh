#!/bin/sh
# plugboard: hook container.create priority=30 format=env
#
# Adds an environment variable to every container created. In env format the spec arrives
# flattened into PB_* variables (PB_NAME, PB_ENV_0, PB_ENV_COUNT, PB_MOUNTS_0_SOURCE, ...)
# and the answer is PB_*=VALUE lines: PB_ENV_<count> appends to the env list.
#
#   plugboardd --plugin-exec "add-env=plugboard-sh plugins/shell/add-env.sh PLUGBOARD_MANAGED=1"
#
# $2 is the KEY=VALUE to add (default PLUGBOARD_MANAGED=1). The answer is one line per
# variable, so what it prints is checked first: the count must be a number and the value
# must not hold a newline (either would forge lines), and it is printed with printf '%s'.
nl='
'
count=${PB_ENV_COUNT:-0}
value=${2:-PLUGBOARD_MANAGED=1}
case "$count" in ''|*[!0-9]*) echo "add-env: PB_ENV_COUNT is not a number" >&2; exit 1 ;; esac
case "$value" in *"$nl"*) echo "add-env: the variable to add has a newline in it" >&2; exit 1 ;; esac
printf 'PB_ENV_%s=%s\n' "$count" "$value"
