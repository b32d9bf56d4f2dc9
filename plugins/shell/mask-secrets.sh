#!/bin/sh
# plugboard: pipeline container.log priority=50
#
# Masks secrets in container logs: every line a container writes passes through the
# pipeline as a container.log message {"id", "stream", "line", "time"} before it reaches
# `plugboard container logs`; this script replaces the value of password=, passwd=,
# secret= and token= with ****, and routes the message on.
#
#   plugboardd --plugin containers --plugin-exec "mask=plugboard-sh plugins/shell/mask-secrets.sh"
body=$(cat)
masked=$(printf '%s' "$body" | sed -E 's/((password|passwd|secret|token)=)[^ "\\&]*/\1****/g')
printf '{"type": "container.log", "body": %s}\n' "$masked"
