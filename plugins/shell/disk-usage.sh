#!/bin/sh
# plugboard: job disk.usage format=env timeout=5s
#
# A job in shell: how much space a directory takes. The argument {"path": "/var/log"}
# arrives as PB_PATH; the answer is KEY=VALUE lines, which become the result map
# {"path": "/var/log", "kb": "1234"}. A failure exits non-zero: its stderr is the error.
#
#   plugboard call disk.usage '{"path": "/var/log"}'
[ -n "$PB_PATH" ] || { echo "disk.usage needs {\"path\": DIR}" >&2; exit 1; }
[ -d "$PB_PATH" ] || { echo "$PB_PATH is not a directory" >&2; exit 1; }
kb=$(du -sk "$PB_PATH" 2>/dev/null | cut -f1)
echo "path=$PB_PATH"
echo "kb=$kb"
