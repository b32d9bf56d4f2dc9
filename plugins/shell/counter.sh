#!/bin/sh
# plugboard: job counter.next mode=stream
# plugboard: job counter.peek mode=stream
#
# Stream mode: one process answers every call, reading one JSON request per line on stdin
# ({"kind": "job", "name": "counter.next", "payload": ...}) and writing one JSON reply per
# line on stdout ({"result": ...}). No process start per call, and state lives in the loop.
#
#   plugboard call counter.next     # {"count": 1}, then 2, ...
[ "$1" = "--stream" ] || { echo "counter.sh runs in stream mode only" >&2; exit 1; }
count=0
while IFS= read -r request; do
    case "$request" in
        *'"name":"counter.next"'*) count=$((count + 1)) ;;
    esac
    printf '{"result": {"count": %d}}\n' "$count"
done
