#!/usr/bin/env bash
# Baseline: llama.cpp (through llama-cpp-python, built from source for this
# CPU) on the same GGUF and thread count pdserve is measured with.
#
# Creates the venv $PDSERVE_CACHE/venv-llamacpp (default
# ~/.cache/pdserve/venv-llamacpp) on first use; compiling llama.cpp takes
# several minutes on 2 cores, later runs reuse the build.
#
# Usage: scripts/bench-llamacpp.sh [bench_llamacpp.py options...]
#   e.g. scripts/bench-llamacpp.sh --threads 2 --decode-tokens 128 --repeats 3
#        scripts/bench-llamacpp.sh --model ~/.cache/pdserve/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
# Prints human-readable lines on stderr and one JSON line on stdout:
#   {"engine":"llama.cpp","decode_tok_s":..,"prefill512_tok_s":..,...}
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
VENV="$CACHE/venv-llamacpp"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# Native CPU build; no BLAS (we compare against the plain ggml CPU kernels).
# On CPUs with AMX, 0.3.36's native build (which turns ggml's AMX path on)
# segfaults in llama_decode on the 512-token prefill (seen 2026-12-01, Xeon with
# AMX), so there the ISA is named explicitly: the same AVX-512 kernels, no AMX.
default_cmake_args="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    default_cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    default_cmake_args+=" -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON"
    default_cmake_args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
fi
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$default_cmake_args}"
PYTHON="${PYTHON:-python3}"

log() { echo "bench-llamacpp: $*" >&2; }
die() {
    echo "bench-llamacpp: ERROR: $*" >&2
    exit 1
}

# The model first (fast when cached).
bash "$HERE/fetch-assets.sh" -q >&2

# A C/C++ toolchain is needed to compile llama.cpp; cmake and ninja come from
# the Python build backend's own requirements when the system has none.
if ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
    log "installing build-essential (apt)"
    [ "$(id -u)" = 0 ] || die "g++/make missing and not root: apt-get install build-essential"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
fi

stamp="$VENV/.pdserve-llamacpp"
want="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION $LLAMA_CMAKE_ARGS $(uname -m)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    # --force-reinstall: the same version built with other CMake arguments must
    # be rebuilt (pip would otherwise keep the installed one).
    log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source into $VENV (takes minutes)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    start=$(date +%s)
    n=1
    until CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --force-reinstall \
        --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"; do
        [ "$n" -lt 3 ] || die "pip install llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION failed $n times"
        log "install attempt $n failed, retrying"
        n=$((n + 1))
        sleep 3
    done
    echo "$want" >"$stamp"
    log "built in $(($(date +%s) - start))s"
fi

exec "$VENV/bin/python" "$HERE/bench_llamacpp.py" "$@"
