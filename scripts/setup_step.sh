#!/bin/sh
# One setup step of `make` as one line: `setup_step.sh LOG LABEL COMMAND...` runs COMMAND with its
# output appended to LOG and prints "LABEL ... done (12 s)". pip's notes that an extra package index
# of this machine lacks a package ("Location ... is ignored", one per package and index) and the
# setuptools banners stay in LOG. Errors still show: ERROR lines after a step that succeeded, and the
# end of the output (without the notes) when it failed, which stops make with its exit code.
log=$1
label=$2
shift 2
noise='is ignored: it is neither a file nor a directory'
out=$(mktemp)
start=$(date +%s)
printf '%s ... ' "$label"
"$@" >"$out" 2>&1
status=$?
took=$(( $(date +%s) - start ))
cat "$out" >>"$log"
if [ "$status" -eq 0 ]; then
    echo "done ($took s)"
    grep -E '^(ERROR|error):' "$out" | grep -v "$noise" | sed 's/^/  /'
else
    echo "failed (exit $status, $took s); the end of its output (all of it: $log):"
    grep -v "$noise" "$out" | tail -n 40 | sed 's/^/  /'
fi
rm -f "$out"
exit "$status"
