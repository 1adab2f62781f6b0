#!/usr/bin/env bash
# Fetches NVRTC (CUDA's run-time compiler) for the `cuda` feature's kernel tests.
#
#   bash scripts/fetch-nvrtc.sh       # prints the library directory on stdout
#
# The library comes from the Python wheel `nvidia-cuda-nvrtc` (CUDA 13.0, the
# toolkit of the GPU machines; its shared libraries only, no Python import). NVRTC
# needs no GPU and no driver, so the kernels compile to PTX on any machine.
# Unpacked once into $PDSERVE_CACHE/nvrtc (default ~/.cache/pdserve/nvrtc) and
# reused; pdserve finds it there (engine/src/backend/cuda/mod.rs).
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
VERSION="${NVRTC_WHEEL_VERSION:-13.0.*}"
DEST="$CACHE/nvrtc"
STAMP="$DEST/.complete-${VERSION//\*/x}"
PYTHON="${PYTHON:-python3}"

log() { echo "fetch-nvrtc: $*" >&2; }

if [[ -f "$STAMP" && -f "$DEST/libnvrtc.so.13" ]]; then
    echo "$DEST"
    exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
log "downloading nvidia-cuda-nvrtc==$VERSION"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "nvidia-cuda-nvrtc==$VERSION" >&2
WHEEL="$(ls "$TMP"/nvidia_cuda_nvrtc-*.whl 2>/dev/null | head -n1)"
if [[ -z "$WHEEL" ]]; then
    log "no nvidia-cuda-nvrtc wheel was downloaded"
    exit 1
fi

log "unpacking the libraries of $(basename "$WHEEL") into $DEST"
rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
"$PYTHON" - "$WHEEL" "$DEST.partial" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if "/lib/libnvrtc" in n and ".so" in n and ".alt." not in n]
    if not any(n.endswith("/libnvrtc.so.13") for n in libs):
        sys.exit("fetch-nvrtc: the wheel has no libnvrtc.so.13")
    for n in libs:
        with z.open(n) as src, open(os.path.join(dest, os.path.basename(n)), "wb") as out:
            out.write(src.read())
PY
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
touch "$STAMP"
echo "$DEST"
