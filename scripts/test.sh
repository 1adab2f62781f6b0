#!/usr/bin/env bash
# shellcheck disable=SC2317  # phase functions are invoked indirectly through phase()
# pdserve's one test command (CI runs it through .ci/run).
#
# Phases, each timed:
#   prereqs  Debian packages the build needs (skipped when already installed)
#   assets   scripts/fetch-assets.sh --all: real models + tokenizer into the cache
#   venv     Python venv with the end-to-end test clients (scripts/requirements-e2e.txt)
#   fmt      cargo fmt --all -- --check
#   clippy   cargo clippy --workspace --all-targets -- -D warnings
#   build    cargo build --release --features nixl (the binary the end-to-end tests run)
#   test     cargo test --workspace (PDSERVE_MODELS_DIR exported for real-model tests)
#   nixl     cargo test -p pdserve-cluster -p pdserve-actors --features nixl (NIXL
#            transfers and workers over NIXL, real libnixl from scripts/fetch-nixl.sh;
#            required to run, not skip — and then in e2e too)
#   cuda     cargo test -p pdserve-engine --features cuda (backend unit tests, tests/cuda.rs, tests/cuda_backend.rs): the CUDA backend
#            builds without CUDA, its device probe fails cleanly here, and its kernels
#            compile to PTX with NVRTC (from scripts/fetch-nvrtc.sh; required to run)
#   k8s      scripts/validate-k8s.py: render deploy/k8s (base, overlays) and check it
#            against the Kubernetes schemas and cross-references, offline; with a
#            release build, also every container's flags against the binary
#   docker   hadolint on the Dockerfile (the image itself is not built here)
#   e2e      every tests/e2e/*.py, run with the venv's python
#
# A failing phase does not stop the later ones (so one run reports everything),
# except that prereqs/assets failures are fatal and e2e is skipped without a
# release build. Exit status is non-zero when any phase failed. The last line
# sums the individual tests: "tests: N passed, N failed, N skipped".
#
# Environment:
#   PDSERVE_CACHE       cache root (default ~/.cache/pdserve)
#   PDSERVE_MODELS_DIR  model directory (default $PDSERVE_CACHE/models)
#   PDSERVE_SKIP_APT=1  do not check/install Debian packages
#   PDSERVE_FAIL_FAST=1 stop at the first failing phase
#   PDSERVE_PHASES="k8s e2e"  run only these of fmt clippy build test nixl cuda k8s docker e2e
#                       (prereqs, assets and venv always run; a skipped build reuses
#                       an existing target/release/pdserve)
#   PDSERVE_FETCH_LARGE=1  also fetch the optional large model
#   PDSERVE_CARGO_TEST_TIMEOUT, PDSERVE_E2E_TIMEOUT  seconds before `cargo test`
#                       (default 3600) or one end-to-end test (900) is killed
#
# End-to-end tests: each tests/e2e/*.py (names starting with "_" are helpers)
# is one test, run as `$PDSERVE_VENV/bin/python FILE` from the repo root with
# PDSERVE_BIN (the release binary), PDSERVE_MODELS_DIR and PDSERVE_CACHE set.
# Exit 0 = pass, 77 = skipped (print why), anything else = fail.
set -uo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT="$(pwd)"

export PDSERVE_CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
export PDSERVE_MODELS_DIR="${PDSERVE_MODELS_DIR:-$PDSERVE_CACHE/models}"
export PDSERVE_VENV="${PDSERVE_VENV:-$PDSERVE_CACHE/venv}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PYTHON="${PYTHON:-python3}"
LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/pdserve-test.XXXXXX")"
trap 'rm -rf "$LOGDIR"' EXIT

# Debian packages: pkg-config for -sys crates; libclang for bindgen (nixl-sys).
APT_PACKAGES=(pkg-config libclang1-14 libclang-common-14-dev)

if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

T_START=$(date +%s)
PHASES=()
FAILED=0
TESTS_PASSED=0
TESTS_FAILED=0
TESTS_SKIPPED=0

fmt_secs() {
    local s="$1"
    if [ "$s" -ge 60 ]; then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

print_summary() {
    local p
    echo
    echo "==================== pdserve test summary ===================="
    for p in "${PHASES[@]}"; do echo "  $p"; done
    echo "  total     $(fmt_secs $(($(date +%s) - T_START)))"
    if [ "$FAILED" = 0 ]; then
        echo "test.sh: all phases passed"
    else
        echo "test.sh: FAILED ($FAILED phase(s) failed)"
    fi
    echo "tests: $TESTS_PASSED passed, $TESTS_FAILED failed, $TESTS_SKIPPED skipped"
}

# phase NAME CMD...: run CMD, time it, record the result.
phase() {
    local name="$1"
    shift
    local t0 rc
    echo
    echo "==> [$name] $*"
    t0=$(date +%s)
    "$@"
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ "$rc" = 0 ]; then
        PHASES+=("$(printf '%-9s ok      %s' "$name" "$(fmt_secs "$dt")")")
        echo "<== [$name] ok ($(fmt_secs "$dt"))"
    else
        PHASES+=("$(printf '%-9s FAILED  %s (exit %s)' "$name" "$(fmt_secs "$dt")" "$rc")")
        echo "<== [$name] FAILED with exit $rc ($(fmt_secs "$dt"))"
        FAILED=$((FAILED + 1))
        if [ "${PDSERVE_FAIL_FAST:-0}" = 1 ]; then
            print_summary
            exit 1
        fi
    fi
    return "$rc"
}

# wanted NAME: whether PDSERVE_PHASES (unset: all) names the phase; records a skip.
wanted() {
    [ -z "${PDSERVE_PHASES:-}" ] && return 0
    case " $PDSERVE_PHASES " in *" $1 "*) return 0 ;; esac
    skip_phase "$1" "not in PDSERVE_PHASES"
    return 1
}

skip_phase() {
    PHASES+=("$(printf '%-9s skipped (%s)' "$1" "$2")")
    echo
    echo "--- [$1] skipped: $2"
}

fatal() {
    print_summary
    echo "test.sh: stopping: $*" >&2
    exit 1
}

# ---- phases -----------------------------------------------------------------
install_prereqs() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    command -v "$PYTHON" >/dev/null || missing+=(python3 python3-venv)
    command -v npm >/dev/null || missing+=(npm)
    command -v g++ >/dev/null || missing+=(build-essential)
    if [ "${#missing[@]}" = 0 ]; then
        echo "all Debian prerequisites present: ${APT_PACKAGES[*]}"
    else
        if [ "$(id -u)" != 0 ]; then
            echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
            return 1
        fi
        echo "installing: ${missing[*]}"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"; } </dev/null >"$LOGDIR/apt.log" 2>&1; then
            tail -n 30 "$LOGDIR/apt.log" >&2
            echo "apt-get install ${missing[*]} failed" >&2
            return 1
        fi
    fi
    local tool
    for tool in cargo rustc; do
        command -v "$tool" >/dev/null || {
            echo "$tool not found: install a Rust toolchain (rustup) first" >&2
            return 1
        }
    done
    cargo fmt --version >/dev/null 2>&1 || {
        echo "rustfmt missing: rustup component add rustfmt" >&2
        return 1
    }
    cargo clippy --version >/dev/null 2>&1 || {
        echo "clippy missing: rustup component add clippy" >&2
        return 1
    }
    cargo --version
    rustc --version
}

setup_venv() {
    local req="$ROOT/scripts/requirements-e2e.txt"
    local stamp="$PDSERVE_VENV/.pdserve-requirements.sha256"
    local want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [ -x "$PDSERVE_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "venv up to date: $PDSERVE_VENV"
        return 0
    fi
    if [ ! -x "$PDSERVE_VENV/bin/python" ]; then
        "$PYTHON" -m venv "$PDSERVE_VENV" || return 1
    fi
    local n
    for n in 1 2 3; do
        if "$PDSERVE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"; then
            echo "$want" >"$stamp"
            echo "venv ready: $PDSERVE_VENV"
            return 0
        fi
        echo "pip install attempt $n failed" >&2
        sleep $((2 * n))
    done
    return 1
}

run_cargo_tests() {
    local log="$LOGDIR/cargo-test.log" rc
    # A hung test must fail the phase, not run into CI's limit.
    timeout --kill-after=30 "${PDSERVE_CARGO_TEST_TIMEOUT:-3600}" cargo test --workspace 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    count_cargo_results "$log"
    return "$rc"
}

# count_cargo_results LOG: adds the "test result:" lines of a cargo test log to the
# totals, e.g. "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; ...".
count_cargo_results() {
    local counts p f i
    counts="$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$1" |
        awk '{p+=$1; f+=$2; i+=$3} END {print p+0, f+0, i+0}')"
    read -r p f i <<<"$counts"
    TESTS_PASSED=$((TESTS_PASSED + p))
    TESTS_FAILED=$((TESTS_FAILED + f))
    TESTS_SKIPPED=$((TESTS_SKIPPED + i))
    echo "cargo test: $p passed, $f failed, $i ignored"
}

run_e2e() {
    export PDSERVE_BIN="$ROOT/target/release/pdserve"
    local f rc any=0 failed=0
    for f in "$ROOT"/tests/e2e/*.py; do
        [ -e "$f" ] || continue
        case "$(basename "$f")" in _*) continue ;; esac
        any=1
        echo "--- e2e: ${f#"$ROOT"/}"
        local t0
        t0=$(date +%s)
        timeout --kill-after=15 "${PDSERVE_E2E_TIMEOUT:-900}" "$PDSERVE_VENV/bin/python" "$f" </dev/null
        rc=$?
        [ "$rc" = 124 ] && echo "--- e2e: ${f#"$ROOT"/} killed after ${PDSERVE_E2E_TIMEOUT:-900} s"
        local dt=$(($(date +%s) - t0))
        case "$rc" in
            0)
                TESTS_PASSED=$((TESTS_PASSED + 1))
                echo "--- e2e: ${f#"$ROOT"/} ok ($(fmt_secs "$dt"))"
                ;;
            77)
                TESTS_SKIPPED=$((TESTS_SKIPPED + 1))
                echo "--- e2e: ${f#"$ROOT"/} skipped ($(fmt_secs "$dt"))"
                ;;
            *)
                TESTS_FAILED=$((TESTS_FAILED + 1))
                failed=1
                echo "--- e2e: ${f#"$ROOT"/} FAILED with exit $rc ($(fmt_secs "$dt"))"
                ;;
        esac
    done
    [ "$any" = 1 ] || echo "no end-to-end tests (tests/e2e/*.py)"
    return "$failed"
}

run_k8s() {
    local args=()
    if [ "${BUILD_OK:-0}" = 1 ]; then args+=(--bin "$ROOT/target/release/pdserve"); fi
    "$PDSERVE_VENV/bin/python" "$ROOT/scripts/validate-k8s.py" "${args[@]}"
}

# NIXL transfers through a real libnixl (UCX, DRAM to DRAM): the library comes
# from the nixl-cu12 wheel (scripts/fetch-nixl.sh, cached); the tests must run,
# not skip (PDSERVE_REQUIRE_NIXL=1).
# Then the workers over NIXL (actors/tests/disaggregated.rs, module nixl).
run_nixl_tests() {
    bash "$ROOT/scripts/fetch-nixl.sh" >/dev/null || return 1
    local log="$LOGDIR/nixl-test.log" rc
    PDSERVE_REQUIRE_NIXL=1 timeout --kill-after=30 1800 \
        cargo test -p pdserve-cluster -p pdserve-actors --features nixl \
        --test nixl_transport --test disaggregated 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    count_cargo_results "$log"
    return "$rc"
}

# The CUDA backend without a GPU: NVRTC from the nvidia-cuda-nvrtc wheel
# (scripts/fetch-nvrtc.sh, cached) compiles the kernels; the tests must run.
run_cuda_tests() {
    bash "$ROOT/scripts/fetch-nvrtc.sh" >/dev/null || return 1
    local log="$LOGDIR/cuda-test.log" rc
    # The backend's host-side unit tests, then the device tests (which skip,
    # saying why, without a GPU; PDSERVE_REQUIRE_CUDA=1 makes that a failure).
    {
        PDSERVE_REQUIRE_NVRTC=1 timeout --kill-after=30 1800 \
            cargo test -p pdserve-engine --features cuda --lib backend::cuda &&
            PDSERVE_REQUIRE_NVRTC=1 timeout --kill-after=30 1800 \
                cargo test -p pdserve-engine --features cuda --test cuda --test cuda_backend \
                -- --nocapture
    } 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    count_cargo_results "$log"
    return "$rc"
}

lint_dockerfile() {
    "$PDSERVE_VENV/bin/hadolint" "$ROOT/Dockerfile" && echo "hadolint: Dockerfile clean"
}

# ---- main -------------------------------------------------------------------
# Everything runs from inside main(), so bash has parsed the whole file before
# the first command: editing or checking out this file mid-run cannot derail it.
main() {
    echo "pdserve tests in $ROOT (cache $PDSERVE_CACHE, $(nproc) cores)"
    BUILD_OK=0

    if [ "${PDSERVE_SKIP_APT:-0}" = 1 ]; then
        skip_phase prereqs "PDSERVE_SKIP_APT=1"
    else
        phase prereqs install_prereqs || fatal "prerequisites missing"
    fi
    phase assets bash scripts/fetch-assets.sh --all || fatal "model assets unavailable"
    phase venv setup_venv || fatal "Python venv for end-to-end tests could not be set up"
    wanted fmt && phase fmt cargo fmt --all -- --check
    wanted clippy && phase clippy cargo clippy --workspace --all-targets -- -D warnings
    if wanted build; then
        # With NIXL built in: the end-to-end tests cover both KV transports.
        if phase build cargo build --release --features nixl; then BUILD_OK=1; else BUILD_OK=0; fi
    elif [ -x "$ROOT/target/release/pdserve" ]; then
        BUILD_OK=1
    fi
    wanted test && phase test run_cargo_tests
    # Once libnixl is fetched and works, the end-to-end NIXL checks must run too.
    wanted nixl && phase nixl run_nixl_tests && export PDSERVE_REQUIRE_NIXL=1
    wanted cuda && phase cuda run_cuda_tests
    wanted k8s && phase k8s run_k8s
    wanted docker && phase docker lint_dockerfile
    if ! wanted e2e; then
        :
    elif [ "$BUILD_OK" = 1 ]; then
        phase e2e run_e2e
    else
        skip_phase e2e "no release build"
    fi

    print_summary
    [ "$FAILED" = 0 ]
}

main "$@"
exit $?
