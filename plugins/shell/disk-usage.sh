#!/bin/sh
# plugboard: job disk.usage format=env timeout=5s
#
# A job in shell: how much space a directory takes. The argument {"path": "/var/log"}
# arrives as PB_PATH; the answer is KEY=VALUE lines, which become the result map
# {"path": "/var/log", "kb": "1234"}. A failure exits non-zero: its stderr is the error.
#
# The answer is one line per key, so a value printed back must not hold a newline (it
# would forge lines: "kb=1" hidden in a path). PB_PATH comes from the caller: a path with
# a newline is refused, and values are printed with printf '%s', never echo (which turns
# a backslash-n in the text into a newline).
#
#   plugboard call disk.usage '{"path": "/var/log"}'
nl='
'
[ -n "$PB_PATH" ] || { echo "disk.usage needs {\"path\": DIR}" >&2; exit 1; }
case "$PB_PATH" in *"$nl"*) echo "disk.usage: a path with a newline in it is refused" >&2; exit 1 ;; esac
[ -d "$PB_PATH" ] || { printf '%s is not a directory\n' "$PB_PATH" >&2; exit 1; }
kb=$(du -sk -- "$PB_PATH" 2>/dev/null | cut -f1)
printf 'path=%s\n' "$PB_PATH"
printf 'kb=%s\n' "$kb"
