#!/usr/bin/env bash
# Run a command and report its peak resident set size (the largest of the
# process and its waited-for children, as GNU time measures it).
#
# Usage: scripts/peak-rss.sh CMD [ARGS...]
# The command's own stdout/stderr pass through; after it ends one line goes to
# stderr:  peak-rss: 123456 KiB (120.6 MiB) exit=0 wall=1.23s: CMD...
# The exit status is the command's.
set -euo pipefail

if [ "$#" = 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "peak-rss: installing GNU time (apt)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null </dev/null
    else
        echo "peak-rss: /usr/bin/time missing: apt-get install time" >&2
        exit 1
    fi
fi

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
set +e
/usr/bin/time -o "$report" -f '%M %e %x' "$@"
rc=$?
set -e
# GNU time writes "Command exited with non-zero status N" first on failure.
read -r kib wall status < <(tail -n 1 "$report")
if ! [[ "$kib" =~ ^[0-9]+$ ]]; then
    echo "peak-rss: could not measure: $(cat "$report")" >&2
    exit "$rc"
fi
mib="$(awk -v k="$kib" 'BEGIN { printf "%.1f", k / 1024 }')"
echo "peak-rss: $kib KiB ($mib MiB) exit=$status wall=${wall}s: $*" >&2
exit "$rc"
