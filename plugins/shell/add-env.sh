#!/bin/sh
# plugboard: hook container.create priority=30 format=env
#
# Adds an environment variable to every container created. In env format the spec arrives
# flattened into PB_* variables (PB_NAME, PB_ENV_0, PB_ENV_COUNT, PB_MOUNTS_0_SOURCE, ...)
# and the answer is PB_*=VALUE lines: PB_ENV_<count> appends to the env list.
#
#   plugboardd --plugin-exec "add-env=plugboard-sh plugins/shell/add-env.sh PLUGBOARD_MANAGED=1"
#
# $2 is the KEY=VALUE to add (default PLUGBOARD_MANAGED=1).
echo "PB_ENV_${PB_ENV_COUNT:-0}=${2:-PLUGBOARD_MANAGED=1}"
