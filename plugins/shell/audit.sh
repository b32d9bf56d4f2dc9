#!/bin/sh
# plugboard: hook container.create priority=10 policy=optional timeout=2s format=json
#
# Appends every container create to a log file, one line each: the time, the container's
# id and its spec as JSON. It changes nothing (no output = the payload goes on unchanged),
# and it is optional: if it fails, containers are still created.
#
#   plugboardd --plugin-exec "audit=plugboard-sh plugins/shell/audit.sh /var/log/plugboard-audit.log"
#
# $1 is the event (container.create); $2 is the log file.
log=${2:-/var/log/plugboard-audit.log}
spec=$(cat)
printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PLUGBOARD_OBJECT" "$spec" >> "$log"
