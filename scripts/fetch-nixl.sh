#!/usr/bin/env bash
# Fetches a real libnixl (with its UCX backend) for the `nixl` feature.
#
#   bash scripts/fetch-nixl.sh        # prints the library directory on stdout
#   export LD_LIBRARY_PATH="$(bash scripts/fetch-nixl.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#
# The libraries come from the Python wheel `nixl-cu12` (its bundled shared
# libraries only; no Python import). They run DRAM-to-DRAM transfers on machines
# without a GPU. Unpacked once into $PDSERVE_CACHE/nixl (default
# ~/.cache/pdserve/nixl) and reused: a second run downloads nothing.
# pdserve also finds them there without LD_LIBRARY_PATH (see
# cluster/src/transport/nixl.rs), so exporting the path is optional.
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
VERSION="${NIXL_WHEEL_VERSION:-1.5.1}"
DEST="$CACHE/nixl"
LIBDIR="$DEST/.nixl_cu12.mesonpy.libs"
STAMP="$DEST/.complete-$VERSION"
PYTHON="${PYTHON:-python3}"

log() { echo "fetch-nixl: $*" >&2; }

if [[ -f "$STAMP" && -f "$LIBDIR/libnixl_capi.so" ]]; then
    echo "$LIBDIR"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
log "downloading nixl-cu12==$VERSION"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "nixl-cu12==$VERSION" >&2
WHEEL="$(ls "$TMP"/nixl_cu12-*.whl 2>/dev/null | head -n1)"
if [[ -z "$WHEEL" ]]; then
    log "no nixl-cu12 wheel was downloaded"
    exit 1
fi

log "unpacking $(basename "$WHEEL") into $DEST"
rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
# Only the shared libraries (the core, its plugins, UCX and their bundled
# dependencies); the wheel's Python modules and headers are not needed.
"$PYTHON" - "$WHEEL" "$DEST.partial" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
keep = (".nixl_cu12.mesonpy.libs/", "nixl_cu12.libs/")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(keep) and not n.endswith("/")]
    if not any(n.endswith("/libnixl_capi.so") for n in names):
        sys.exit("fetch-nixl: the wheel has no libnixl_capi.so")
    for n in names:
        z.extract(n, dest)
PY
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
touch "$STAMP"
echo "$LIBDIR"
