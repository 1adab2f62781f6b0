#!/usr/bin/env bash
# GPU benchmark (issue 5): pdserve on CUDA vs PyTorch + transformers, same GPU,
# same model — the exact Qwen3-0.6B shape with random bf16 weights and the real
# Qwen3 tokenizer (written once by `make_model`, engine/examples/make_model.rs).
#
#   bash scripts/bench-gpu.sh              # on the GPU machine
#   bash scripts/bench-gpu.sh --dry-run    # anywhere: tiny shape, CPU, tiny sizes
#   bash scripts/bench-gpu.sh --summary FILE.jsonl...   # table from saved results
#   bash scripts/bench-gpu.sh --stage      # here: pack binaries for a GPU machine
#
# A GPU machine without a Rust toolchain or network gets what it needs staged
# in .bench/gpu/ (ignored by git; ~45 MB): `--stage`, run where pdserve was
# built with `cargo build --release --features cuda`, copies the stripped
# binary, the make_model example, the CUDA test binaries (built here with
# `cargo test --release --no-run --features cuda`) and the Qwen3 tokenizer
# there. Whatever is in
# .bench/gpu/ is then used instead of building or fetching (carry .bench/gpu).
#
# Steps (each bounded by `timeout`; a failed step is reported and the rest go on):
#   tests    the CUDA backend's device tests (engine/tests/cuda.rs, cuda_backend.rs)
#            and the engine tests that run per device (batching, disaggregation,
#            real_model: their `::cuda` variants) with PDSERVE_REQUIRE_CUDA=1, then cuda_backend's op test under
#            compute-sanitizer memcheck and racecheck (when the tool is there);
#            the staged test binaries, or cargo test where cargo is
#   build    cargo build --release --features cuda (plus nixl when a libnixl is
#            found: $PDSERVE_NIXL_LIB_DIR, $PDSERVE_CACHE/nixl, or the loader's
#            cache; a failed nixl build falls back to cuda alone), and the
#            make_model example
#   model    the model directory, generated once into $PDSERVE_CACHE/models and
#            reused (needs the tokenizer from scripts/fetch-assets.sh)
#   pdserve  `pdserve bench-engine --device cuda --json`:
#              decode     batch 1, 128-token prompt, 128 generated (ms/token)
#              prefill    batch 1, 4096-token prompt, 1 generated (ms)
#              batch_mid  64 concurrent requests, 512 prompt / 128 generated
#              batch_max  256 concurrent requests, 512 prompt / 128 generated
#   torch    scripts/bench_gpu_torch.py on the same directory: the same runs with
#            transformers' generate, eager (all four) and with a static cache +
#            torch.compile (decode and batch_mid); skipped, with the reason, when
#            torch or CUDA is missing
#   summary  one markdown table with pdserve's speed-up over each torch mode
#
# Results: every measurement as one JSON line in $RESULTS (default
# ${OUT:-/tmp}/bench-gpu.jsonl, appended to, so runs split over several calls
# add up), the table in ${RESULTS%.jsonl}-summary.md, step logs in
# $BENCH_GPU_LOGS (default /tmp/bench-gpu-logs), packed at the end into
# ${RESULTS%.jsonl}-logs.tar.gz when $OUT is set (three files come back).
#
# Options:
#   --dry-run        tiny model (2 layers, real vocab), --device cpu, tiny sizes,
#                    torch on the CPU if importable; builds only what is missing
#                    (reuses target/release/pdserve); exercises every step here
#   --phases "..."   run only these of: build tests model pdserve torch summary
#   --summary F...   print the table of saved JSON-lines files and exit
#   --stage          fill .bench/gpu/ (see above) and exit
#   -h, --help
# Environment:
#   PDSERVE_CACHE          cache root (default ~/.cache/pdserve)
#   MAKE_MODEL             use this make_model binary (else target/{release,debug}/examples)
#   BENCH_GPU_DRY_RUN=1    same as --dry-run
#   BENCH_GPU_DEVICE       pdserve's --device (default cuda; cpu in a dry run)
#   BENCH_GPU_MODEL_DIR    model directory (default $PDSERVE_CACHE/models/qwen3-0.6b-random-bf16)
#   BENCH_GPU_RUNS         NAME:BATCH:PROMPT:GEN,... (default above)
#   BENCH_GPU_TORCH_MODES  default "eager,compiled"
#   BENCH_GPU_COMPILE_RUNS runs also measured compiled (default "decode,batch_mid")
#   BENCH_GPU_REPEATS      torch timing repeats (default 3)
#   BENCH_GPU_MAX_BATCHED_TOKENS  pdserve --max-batched-tokens (default 8192 on
#                          the GPU, so the 4096-token prompt is one step)
#   BENCH_GPU_KV_CACHE_MB  pdserve --kv-cache-mb (default: bench-engine sizes it)
#   BENCH_GPU_STEP_TIMEOUT seconds per pdserve run (default 120)
#   BENCH_GPU_TORCH_TIMEOUT seconds per torch mode (default 300)
#   BENCH_GPU_BUILD_TIMEOUT seconds per cargo build (default 1800)
#   BENCH_GPU_DEADLINE     seconds for the whole script (default 540, to fit a
#                          10-minute command; 0: none): every step's timeout is
#                          cut to what is left, 15 s kept for the table, and a
#                          step with no time left is reported as not run
#   RESULTS                the JSON-lines file (default ${OUT:-/tmp}/bench-gpu.jsonl)
#   PDSERVE_BIN            use this binary, skip the pdserve build
#   BENCH_GPU_STAGE        staging folder (default .bench/gpu)
#   BENCH_GPU_TOKENIZER    Qwen3 tokenizer folder (default $PDSERVE_MODELS_DIR/qwen3-tokenizer,
#                          else the staged one)
#   PDSERVE_NVRTC_LIB_DIR  directory of libnvrtc.so.13 (else searched for)
#   PYTHON                 python for torch and the table (default python3)
set -uo pipefail

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PYTHON="${PYTHON:-python3}"
CACHE="${PDSERVE_CACHE:-$HOME/.cache/pdserve}"
MODELS="${PDSERVE_MODELS_DIR:-$CACHE/models}"

DRY="${BENCH_GPU_DRY_RUN:-0}"
PHASES="build tests model pdserve torch summary"
SUMMARY_ONLY=()
STAGE_ONLY=0
STAGE="${BENCH_GPU_STAGE:-.bench/gpu}"
while (($#)); do
    case "$1" in
        --dry-run) DRY=1 ;;
        --phases) PHASES="${2:?--phases needs a list}"; shift ;;
        --summary) shift; SUMMARY_ONLY=("$@"); break ;;
        --stage) STAGE_ONLY=1 ;;
        -h | --help)
            sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *) echo "bench-gpu: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "bench-gpu: $*" >&2; }
wanted() { [[ " $PHASES " == *" $1 "* ]]; }

# ---- the table -------------------------------------------------------------
# Reads JSON lines (pdserve rows, torch rows, errors, skips); for each run name
# the last row of each engine/mode wins. Speed-up > 1 means pdserve is faster.
summary() {
    "$PYTHON" - "$@" <<'PY'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError as e:
        print(f"bench-gpu: {e}", file=sys.stderr)
cols = [("pdserve", None), ("torch", "eager"), ("torch", "compiled")]
res, notes, order, device = {}, [], [], {}
for r in rows:
    eng = r.get("engine")
    if r.get("meta"):
        device[eng] = r.get("device")
        continue
    if "skipped" in r:
        notes.append(f"{eng}{' ' + r['mode'] if r.get('mode') else ''}: skipped: {r['skipped']}")
        continue
    name = r.get("name")
    if name is None:
        continue
    if name not in order and "batch" in r:
        order.append(name)
    key = (eng, r.get("mode") if eng == "torch" else None)
    res[(name, key)] = r
    if "error" in r:
        notes.append(f"{eng} {r.get('mode') or ''} {name}: {r['error']}".replace("  ", " "))

def shape(name):
    for k in cols:
        r = res.get((name, k))
        if r and "batch" in r:
            return f"{r['batch']} × {r['prompt_len']}/{r['gen_len']}"
    return "?"

# figure: (label, unit, value function, higher is better)
def e2e(r):
    t = r.get("prefill_s", 0) + r.get("decode_s", 0)
    return r["batch"] * r["gen_len"] / t if t > 0 else None
figures = []
for name in order:
    s = shape(name)
    present = [res[(name, k)] for k in cols if (name, k) in res]
    gen1 = all(r.get("gen_len") == 1 for r in present)
    b1 = all(r.get("batch") == 1 for r in present)
    if gen1:
        figures.append((f"prefill ms — {name} ({s})", lambda r: r["prefill_s"] * 1e3, False, name))
    elif b1:
        figures.append((f"decode ms/token — {name} ({s})", lambda r: r["ms_per_step"], False, name))
        figures.append((f"prefill ms (TTFT) — {name} ({s})", lambda r: r["prefill_s"] * 1e3, False, name))
    else:
        figures.append((f"decode tok/s — {name} ({s})", lambda r: r["decode_tok_s"], True, name))
        figures.append((f"output tok/s incl. prefill — {name} ({s})", e2e, True, name))

def cell(name, k, fn):
    r = res.get((name, k))
    if r is None:
        return None, "—"
    if "error" in r:
        return None, "error"
    try:
        v = fn(r)
    except (KeyError, TypeError, ZeroDivisionError):
        v = None
    if not v:
        return None, "—"
    return v, (f"{v:.2f}" if v < 100 else f"{v:.0f}")

dev = device.get("torch") or device.get("pdserve") or "?"
print(f"GPU: {dev}")
print()
print("shape: batch × prompt/generated tokens; one pdserve bench-engine run each, torch: best of its repeats")
print()
print("| figure | pdserve | torch eager | torch compiled | speed-up vs eager | speed-up vs compiled |")
print("|---|---|---|---|---|---|")
for label, fn, higher, name in figures:
    vals = [cell(name, k, fn) for k in cols]
    p = vals[0][0]
    ratios = []
    for v, _ in vals[1:]:
        if p and v:
            ratios.append(f"{(p / v if higher else v / p):.2f}×")
        else:
            ratios.append("—")
    print(f"| {label} | " + " | ".join(t for _, t in vals) + " | " + " | ".join(ratios) + " |")
print()
print("speed-up = pdserve's advantage (torch time / pdserve time, or pdserve tok/s / torch tok/s); > 1: pdserve is faster.")
for n in notes:
    print(f"- {n}")
PY
}

if ((${#SUMMARY_ONLY[@]})); then
    summary "${SUMMARY_ONLY[@]}"
    exit $?
fi

# ---- staging for a GPU machine without cargo -------------------------------
if ((STAGE_ONLY)); then
    src="${PDSERVE_BIN:-target/release/pdserve}"
    mm=""
    for m in "${MAKE_MODEL:-}" target/release/examples/make_model target/debug/examples/make_model; do
        [[ -z "$mm" && -n "$m" && -x "$m" ]] && mm="$m"
    done
    [[ -x "$src" ]] || { log "no $src: cargo build --release --features cuda first"; exit 1; }
    [[ -n "$mm" ]] || { log "no make_model: cargo build -p pdserve-engine --example make_model first"; exit 1; }
    [[ -f "$MODELS/qwen3-tokenizer/tokenizer.json" ]] || bash scripts/fetch-assets.sh -q || exit 1
    # The CUDA backend names NVRTC's soname; a build without the feature has no such string.
    if ! grep -q "libnvrtc.so" "$src"; then
        log "WARNING: $src was built without CUDA (cargo build --release --features cuda)"
    fi
    mkdir -p "$STAGE/qwen3-tokenizer"
    cp "$src" "$STAGE/pdserve" && cp "$mm" "$STAGE/make_model" || exit 1
    strip "$STAGE/pdserve" "$STAGE/make_model" 2>/dev/null || log "strip failed: staging unstripped binaries"
    cp "$MODELS"/qwen3-tokenizer/tokenizer{,_config}.json "$STAGE/qwen3-tokenizer/" || exit 1
    # The device test binaries, by the name of their test file.
    mkdir -p "$STAGE/tests"
    cargo test --release --no-run --features cuda -p pdserve-engine --test cuda --test cuda_backend \
        --test batching --test disaggregation --test device_picks --test real_model \
        --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do
            cp "$exe" "$STAGE/tests/$name" && strip "$STAGE/tests/$name" 2>/dev/null
        done
    [[ -x "$STAGE/tests/cuda_backend" ]] || { log "could not build the CUDA test binaries"; exit 1; }
    log "staged $(du -sh "$STAGE" | cut -f1) in $STAGE: $src, $mm, tests/{$(find "$STAGE/tests" -type f -printf "%f " )}, the Qwen3 tokenizer"
    log "on the GPU machine (carry $STAGE): bash scripts/bench-gpu.sh"
    exit 0
fi

# ---- settings --------------------------------------------------------------
if [[ "$DRY" == 1 ]]; then
    DEVICE="${BENCH_GPU_DEVICE:-cpu}"
    SHAPE=tiny
    MODEL_DIR="${BENCH_GPU_MODEL_DIR:-$MODELS/qwen3-tiny-random-bf16}"
    RUNS="${BENCH_GPU_RUNS:-decode:1:16:8,prefill:1:64:1,batch_mid:4:16:8,batch_max:8:16:8}"
    REPEATS="${BENCH_GPU_REPEATS:-1}"
    MAX_BATCHED="${BENCH_GPU_MAX_BATCHED_TOKENS:-}"
    TORCH_DEVICE=cpu
else
    DEVICE="${BENCH_GPU_DEVICE:-cuda}"
    SHAPE=qwen3-0.6b
    MODEL_DIR="${BENCH_GPU_MODEL_DIR:-$MODELS/qwen3-0.6b-random-bf16}"
    RUNS="${BENCH_GPU_RUNS:-decode:1:128:128,prefill:1:4096:1,batch_mid:64:512:128,batch_max:256:512:128}"
    REPEATS="${BENCH_GPU_REPEATS:-3}"
    MAX_BATCHED="${BENCH_GPU_MAX_BATCHED_TOKENS:-8192}"
    TORCH_DEVICE=cuda
    [[ "$DEVICE" == cuda* ]] && TORCH_DEVICE="$DEVICE"
fi
TORCH_MODES="${BENCH_GPU_TORCH_MODES:-eager,compiled}"
COMPILE_RUNS="${BENCH_GPU_COMPILE_RUNS:-decode,batch_mid}"
KV_MB="${BENCH_GPU_KV_CACHE_MB:-}"
STEP_TIMEOUT="${BENCH_GPU_STEP_TIMEOUT:-120}"
TORCH_TIMEOUT="${BENCH_GPU_TORCH_TIMEOUT:-300}"
BUILD_TIMEOUT="${BENCH_GPU_BUILD_TIMEOUT:-1800}"
DEADLINE="${BENCH_GPU_DEADLINE:-540}"
# A step's time limit: its own, cut to what the deadline leaves (0: no time left).
limit() {
    local t="$1" left
    ((DEADLINE > 0)) || { echo "$t"; return; }
    left=$((DEADLINE - SECONDS - 15))
    ((left < t)) && t=$left
    ((t < 5)) && t=0
    echo "$t"
}
TOKDIR="${BENCH_GPU_TOKENIZER:-$MODELS/qwen3-tokenizer}"
[[ ! -f "$TOKDIR/tokenizer.json" && -f "$STAGE/qwen3-tokenizer/tokenizer.json" ]] &&
    TOKDIR="$STAGE/qwen3-tokenizer"
[[ -z "${MAKE_MODEL:-}" && -x "$STAGE/make_model" ]] && MAKE_MODEL="$STAGE/make_model"

RESULTS="${RESULTS:-${OUT:-/tmp}/bench-gpu.jsonl}"
BASE="${RESULTS%.jsonl}"
LOGS="${BENCH_GPU_LOGS:-/tmp/bench-gpu-logs}"
mkdir -p "$(dirname "$RESULTS")" "$LOGS"
touch "$RESULTS"
FAILED=()
fail() { FAILED+=("$1"); log "FAILED: $1"; }

log "$([[ "$DRY" == 1 ]] && echo "DRY RUN: ")shape $SHAPE, device $DEVICE, runs $RUNS"
log "results -> $RESULTS (logs in $LOGS)"
GPU_NAME=cpu
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 |
        sed 's/^/bench-gpu: GPU: /' >&2
    [[ "$DEVICE" == cuda* ]] &&
        GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
else
    log "no nvidia-smi here"
fi

# ---- build -----------------------------------------------------------------
nixl_lib_dir() {
    local d
    for d in "${PDSERVE_NIXL_LIB_DIR:-}" "$CACHE/nixl/.nixl_cu12.mesonpy.libs"; do
        [[ -n "$d" && -f "$d/libnixl_capi.so" ]] && { echo "$d"; return 0; }
    done
    d="$(ldconfig -p 2>/dev/null | awk '/libnixl_capi\.so/ {print $NF; exit}')"
    [[ -n "$d" ]] && { dirname "$d"; return 0; }
    return 1
}

cargo_build() { # log-name args...
    local name="$1"; shift
    local t
    t="$(limit "$BUILD_TIMEOUT")"
    ((t > 0)) || { log "cargo build $*: no time left"; return 1; }
    log "cargo build $* (log: $LOGS/$name.log)"
    timeout -k 30 "$t" cargo build "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    ((rc == 0)) || tail -n 15 "$LOGS/$name.log" | sed 's/^/    /' >&2
    return $rc
}

BIN="${PDSERVE_BIN:-}"
if [[ -z "$BIN" && -x "$STAGE/pdserve" ]]; then
    BIN="$STAGE/pdserve"
    log "using the staged $BIN (no pdserve build)"
fi
if ! command -v cargo >/dev/null 2>&1 && wanted build; then
    log "no cargo here: nothing is built (stage binaries with --stage where they were built)"
    PHASES="${PHASES/build/}"
fi
if [[ "$DRY" == 1 ]]; then
    # Here the release binary is shared with whoever else builds in this tree:
    # reuse it, build only what is missing, in the cheap profile.
    GPU_FEATURES="cuda"
    if d="$(nixl_lib_dir)"; then GPU_FEATURES="cuda,nixl"; log "libnixl found in $d"; else log "no libnixl: NIXL stays optional"; fi
    log "dry run: on the GPU the build would be: cargo build --release --features $GPU_FEATURES"
    if [[ -z "$BIN" ]]; then
        for b in target/release/pdserve target/debug/pdserve; do
            [[ -x "$b" ]] && { BIN="$b"; break; }
        done
    fi
    if wanted build; then
        if [[ -z "$BIN" ]]; then
            if cargo_build pdserve -p pdserve; then BIN=target/debug/pdserve; else fail "build pdserve"; fi
        fi
        if [[ -z "${MAKE_MODEL:-}" ]]; then
            cargo_build make_model -p pdserve-engine --example make_model ||
                log "make_model did not build (an existing binary will do)"
        fi
    fi
else
    if wanted build; then
        if [[ -z "${MAKE_MODEL:-}" ]]; then
            cargo_build make_model --release -p pdserve-engine --example make_model ||
                log "make_model did not build (an existing binary will do)"
        fi
        if [[ -z "$BIN" ]]; then
            BIN=target/release/pdserve
            built=0
            if d="$(nixl_lib_dir)"; then
                log "libnixl found in $d: building with NIXL too"
                export PDSERVE_NIXL_LIB_DIR="$d"
                if cargo_build pdserve-cuda-nixl --release --features cuda,nixl; then
                    built=1
                else
                    log "the cuda+nixl build failed; building with cuda alone"
                fi
            else
                log "no libnixl found (scripts/fetch-nixl.sh): building without NIXL"
            fi
            ((built)) || cargo_build pdserve-cuda --release --features cuda || fail "build pdserve (cuda)"
        fi
    fi
    BIN="${BIN:-target/release/pdserve}"
fi

# The library directories of the nvidia wheels the Python here brings (torch's),
# one per line; empty without them.
py_nvidia_lib_dirs() {
    "$PYTHON" -c 'import nvidia, os; print("\n".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))' 2>/dev/null
}

# NVRTC for the CUDA kernels: pdserve looks in $PDSERVE_NVRTC_LIB_DIR, the
# loader's path and $PDSERVE_CACHE/nvrtc; also try a CUDA toolkit and Python's
# nvidia wheels (the ones torch brings) before giving up.
if [[ "$DEVICE" == cuda* && -z "${PDSERVE_NVRTC_LIB_DIR:-}" && ! -f "$CACHE/nvrtc/libnvrtc.so.13" ]] &&
    ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13'; then
    cands=(/usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/targets/*/lib)
    py_nv="$(py_nvidia_lib_dirs)"
    [[ -n "$py_nv" ]] && mapfile -t -O "${#cands[@]}" cands <<<"$py_nv"
    for d in "${cands[@]}"; do
        if [[ -f "$d/libnvrtc.so.13" ]]; then
            export PDSERVE_NVRTC_LIB_DIR="$d"
            log "NVRTC: $d"
            break
        fi
    done
    [[ -n "${PDSERVE_NVRTC_LIB_DIR:-}" ]] ||
        log "no libnvrtc.so.13 found (scripts/fetch-nvrtc.sh, or set PDSERVE_NVRTC_LIB_DIR): pdserve's CUDA kernels may not compile"
fi

# cuBLAS (and the other CUDA libraries pdserve loads by name at run time): a
# toolkit's on the loader path, else the nvidia wheels the Python here brings.
if [[ "$DEVICE" == cuda* ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    py_libs="$(py_nvidia_lib_dirs | paste -sd: -)"
    if [[ -n "$py_libs" ]]; then
        export LD_LIBRARY_PATH="$py_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        log "CUDA libraries from Python's nvidia wheels on LD_LIBRARY_PATH"
    else
        log "no libcublas on the loader path and no nvidia wheels: pdserve --device cuda will say so"
    fi
fi

# ---- tests -----------------------------------------------------------------
# One device test binary (staged, or built by cargo); its log in $LOGS.
device_test() { # log-name command...
    local name="$1" t rc; shift
    t="$(limit 300)"
    ((t > 0)) || { fail "tests $name: no time left"; return; }
    log "tests: $name (log: $LOGS/tests-$name.log)"
    PDSERVE_REQUIRE_CUDA=1 PDSERVE_REQUIRE_NVRTC=1 timeout -k 10 "$t" "$@" \
        >"$LOGS/tests-$name.log" 2>&1
    rc=$?
    grep -E "^test |test result|relative error|ERROR SUMMARY|skipped" "$LOGS/tests-$name.log" |
        sed 's/^/    /' >&2
    ((rc == 0)) || fail "tests $name: exit $rc (see tests-$name.log)"
}
if wanted tests && [[ "$DEVICE" == cuda* ]]; then
    if [[ -x "$STAGE/tests/cuda_backend" ]]; then
        for exe in "$STAGE"/tests/*; do
            device_test "$(basename "$exe")" "$exe" --test-threads 1 --nocapture
        done
        ops=("$STAGE/tests/cuda_backend" every_op_matches_the_cpu_backend --exact --nocapture)
    elif command -v cargo >/dev/null 2>&1; then
        device_test cargo cargo test --release --features cuda -p pdserve-engine \
            --test cuda --test cuda_backend --test batching --test disaggregation \
            --test device_picks --test real_model -- --test-threads 1 --nocapture
        ops=()
    else
        fail "tests: no staged test binaries and no cargo"
        ops=()
    fi
    if ((${#ops[@]})) && command -v compute-sanitizer >/dev/null 2>&1; then
        for tool in memcheck racecheck; do
            device_test "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 3 "${ops[@]}"
        done
    elif ((${#ops[@]})); then
        log "tests: no compute-sanitizer on the PATH"
    fi
fi

# ---- model -----------------------------------------------------------------
if wanted model; then
    if [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/model.safetensors" ]]; then
        log "model: reusing $MODEL_DIR"
    else
        if [[ ! -f "$TOKDIR/tokenizer.json" ]]; then
            log "no Qwen3 tokenizer in $TOKDIR: running scripts/fetch-assets.sh"
            t="$(limit 300)"
            if ! { ((t > 0)) && timeout -k 10 "$t" bash scripts/fetch-assets.sh -q >&2; }; then
                log "fetch-assets failed (no network? stage the tokenizer with --stage)"
            fi
        fi
        MAKE_MODEL="${MAKE_MODEL:-}"
        for m in target/release/examples/make_model target/debug/examples/make_model; do
            [[ -z "$MAKE_MODEL" && -x "$m" ]] && MAKE_MODEL="$m"
        done
        log "model: generating $SHAPE into $MODEL_DIR with ${MAKE_MODEL:-(no make_model binary)}"
        start=$SECONDS
        rm -f "$LOGS/make_model-run.log"
        t="$(limit 900)"
        if [[ -n "$MAKE_MODEL" ]] && ((t > 0)) && timeout -k 10 "$t" "$MAKE_MODEL" --out "$MODEL_DIR" --tokenizer "$TOKDIR" --shape "$SHAPE" \
            --dtype bf16 --seed 0 --force >"$LOGS/make_model-run.log" 2>&1; then
            log "model: $(du -sh "$MODEL_DIR" | cut -f1) in $((SECONDS - start)) s"
        else
            [[ -f "$LOGS/make_model-run.log" ]] && sed 's/^/    /' "$LOGS/make_model-run.log" >&2
            fail "make_model"
        fi
    fi
fi
HAVE_MODEL=0
[[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/model.safetensors" ]] && HAVE_MODEL=1
if ((HAVE_MODEL == 0)) && { wanted pdserve || wanted torch; }; then
    fail "no model in $MODEL_DIR: pdserve and torch cannot run"
fi

# ---- pdserve ---------------------------------------------------------------
# One bench-engine run; its JSON gets the run's name and engine, or an error row.
pdserve_run() { # name batch prompt gen
    local name="$1" b="$2" p="$3" g="$4" out="$LOGS/pdserve-$1.json" err="$LOGS/pdserve-$1.log"
    local args=(bench-engine --model "$MODEL_DIR" --offline --device "$DEVICE" --json
        --batch "$b" --prompt-len "$p" --gen-len "$g")
    [[ -n "$MAX_BATCHED" ]] && args+=(--max-batched-tokens "$MAX_BATCHED")
    [[ -n "$KV_MB" ]] && args+=(--kv-cache-mb "$KV_MB")
    local start=$SECONDS rc t
    t="$(limit "$STEP_TIMEOUT")"
    : >"$out"
    if ((t > 0)); then
        log "pdserve $name: $BIN ${args[*]} (limit ${t} s)"
        timeout -k 10 "$t" "$BIN" "${args[@]}" >"$out" 2>"$err"
        rc=$?
    else
        echo "the ${DEADLINE} s deadline is spent" >"$err"
        rc=-1
    fi
    "$PYTHON" - "$out" "$err" "$rc" "$name" "$b" "$p" "$g" "$DEVICE" "$((SECONDS - start))" "$t" >>"$RESULTS" <<'PY'
import json, sys
out, err, rc, name, b, p, g, device, wall, limit = sys.argv[1:]
row = None
for line in open(out, errors="replace"):
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except ValueError:
            pass
base = {"engine": "pdserve", "name": name, "device": device, "batch": int(b),
        "prompt_len": int(p), "gen_len": int(g), "wall_s": int(wall)}
if rc == "0" and row is not None:
    base.update(row)
else:
    tail = [l.strip() for l in open(err, errors="replace") if l.strip()]
    why = {"124": f"timed out after {limit} s", "137": f"killed after {limit} s",
           "-1": "not run"}.get(rc, f"exit {rc}")
    base["error"] = (why + (": " + tail[-1] if tail else ""))[:500]
print(json.dumps(base, sort_keys=True))
PY
    local last
    last="$(tail -n 1 "$RESULTS")"
    if [[ "$last" == *'"error"'* ]]; then
        fail "pdserve $name ($(sed -n 's/.*"error": "\([^"]*\)".*/\1/p' <<<"$last"))"
    else
        log "pdserve $name: $last"
    fi
}

if wanted pdserve && ((HAVE_MODEL)); then
    if [[ "$DEVICE" == cuda* && -f "$BIN" ]] && ! grep -q "libnvrtc.so" "$BIN"; then
        log "WARNING: $BIN looks built without CUDA (no NVRTC in it): the cuda runs will fail"
    fi
    printf '{"engine": "pdserve", "meta": true, "device": "%s", "binary": "%s", "shape": "%s"}\n' \
        "${GPU_NAME:-$DEVICE}" "$BIN" "$SHAPE" >>"$RESULTS"
    if [[ -z "$BIN" || ! -x "$BIN" ]]; then
        fail "pdserve: no binary (${BIN:-none})"
    else
        IFS=',' read -r -a run_list <<<"$RUNS"
        for spec in "${run_list[@]}"; do
            IFS=':' read -r name b p g <<<"$spec"
            pdserve_run "$name" "$b" "$p" "$g"
        done
    fi
fi

# ---- torch -----------------------------------------------------------------
if wanted torch && ((HAVE_MODEL)); then
    IFS=',' read -r -a modes <<<"$TORCH_MODES"
    for mode in "${modes[@]}"; do
        t="$(limit "$TORCH_TIMEOUT")"
        if ((t == 0)); then
            fail "torch $mode: not run, the ${DEADLINE} s deadline is spent"
            continue
        fi
        log "torch $mode (limit ${t} s, log: $LOGS/torch-$mode.log)"
        timeout -k 10 "$t" "$PYTHON" scripts/bench_gpu_torch.py --model "$MODEL_DIR" \
            --device "$TORCH_DEVICE" --modes "$mode" --runs "$RUNS" --compile-runs "$COMPILE_RUNS" \
            --repeats "$REPEATS" >"$LOGS/torch-$mode.jsonl" 2>"$LOGS/torch-$mode.log"
        rc=$?
        cat "$LOGS/torch-$mode.jsonl" >>"$RESULTS"
        sed 's/^/    /' "$LOGS/torch-$mode.log" >&2
        case "$rc" in
            0) ;;
            2) # the same reason for every mode; a failure on the GPU machine
                if [[ "$DRY" == 1 ]]; then log "torch: skipped (see above)"; else fail "torch: skipped (see above)"; fi
                break
                ;;
            124 | 137)
                fail "torch $mode: timed out after $t s (the runs it finished are kept)"
                echo "{\"engine\": \"torch\", \"mode\": \"$mode\", \"name\": \"(all)\", \"error\": \"timed out after $t s\"}" >>"$RESULTS"
                ;;
            *) fail "torch $mode: exit $rc" ;;
        esac
    done
fi

# ---- summary ---------------------------------------------------------------
if wanted summary; then
    echo
    summary "$RESULTS" | tee "$BASE-summary.md"
    log "table: $BASE-summary.md; raw results: $RESULTS"
fi
if [[ -n "${OUT:-}" && "$BASE" == "$OUT"/* ]]; then
    tar -czf "$BASE-logs.tar.gz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")" 2>/dev/null &&
        log "logs: $BASE-logs.tar.gz"
fi
if ((${#FAILED[@]})); then
    log "${#FAILED[@]} step(s) failed:"
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
log "all steps succeeded"
