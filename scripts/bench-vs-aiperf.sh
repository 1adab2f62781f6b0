#!/usr/bin/env bash
# `pdserve bench` vs aiperf on the same `pdserve serve` (default model, loopback only).
#
# Usage: bash scripts/bench-vs-aiperf.sh [ROUNDS]      (default 2)
# Env: C (concurrency, 8), N (requests, 64), ISL (128), OSL (32), OUT (results dir,
#      /tmp/pdserve-vs-aiperf), AIPERF_VENV (/tmp/aiperf-venv), PDSERVE_BIN
#      (target/release/pdserve, built when absent), PIN (1: server pinned to core 0
#      with one compute thread, every client pinned to core 1, no burner runs).
#
# Each round runs aiperf, then pdserve bench, with the same concurrency, request
# count, input/output lengths, streaming, ignore_eos and one warm-up request; aiperf
# uses the server's token counts and a tokenizer converted from the model's GGUF
# (scripts/gguf_tokenizer_json.py), and its /metrics scraping and GPU telemetry are
# off so that both tools only send requests. Both sample greedily (temperature 0);
# aiperf gets one more prompt than it measures, so its warm-up prompt is not measured
# again (a prefix-cache hit), and one worker and one record processor, so that its
# own CPU use takes as little as it can from the server's cores. Both tools define
# every figure the same way (checked against aiperf 0.13's sources); on a 2-core
# machine aiperf itself still takes ~0.9 of a core, which the CPU-bound server loses.
# So each round also runs pdserve bench a second time beside a CPU burner that
# takes as many cores as aiperf's own process did in that round: with the client
# CPU matched, the two tools' figures should agree. Alternating rounds expose
# machine noise.
# With PIN=1 the client and the server never share a core, which is the clean
# comparison on a 2-core machine: whatever CPU a client spends is its own.
# Prints both tools' figures and their ratios, and each tool's own CPU time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
C=${C:-8}
N=${N:-64}
ISL=${ISL:-128}
OSL=${OSL:-32}
OUT=${OUT:-/tmp/pdserve-vs-aiperf}
VENV=${AIPERF_VENV:-/tmp/aiperf-venv}
BIN=${PDSERVE_BIN:-target/release/pdserve}
PIN=${PIN:-0}
SERVER_CPU=() CLIENT_CPU=()
if [ "$PIN" = 1 ]; then
    SERVER_CPU=(env RAYON_NUM_THREADS=1 taskset -c 0)
    CLIENT_CPU=(taskset -c 1)
fi
GGUF=${PDSERVE_CACHE:-$HOME/.cache/pdserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf

[ -x "$BIN" ] || cargo build --release --bin pdserve
[ -f "$GGUF" ] || bash scripts/fetch-assets.sh
if [ ! -x "$VENV/bin/aiperf" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q aiperf gguf
fi
"$VENV/bin/python" -c "import gguf" 2>/dev/null || "$VENV/bin/pip" install -q gguf
mkdir -p "$OUT"
"$VENV/bin/python" scripts/gguf_tokenizer_json.py "$GGUF" "$OUT/tokenizer" >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"${SERVER_CPU[@]}" "$BIN" serve --http-port "$PORT" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "$URL/health" >/dev/null && break
    sleep 1
done
MODEL=$(curl -sf "$URL/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "server $URL, model $MODEL; $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"

# burn FRACTION SECONDS...: keeps FRACTION of a core (split over one process per
# started core) busy in short duty cycles until killed — the CPU a client like
# aiperf takes from the server, without its requests.
burn() {
    python3 - "$1" <<'PY' &
import math, multiprocessing as mp, sys, time
frac = min(float(sys.argv[1]), 1.9)
n = max(1, math.ceil(frac))
duty = frac / n
def spin():
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < duty * 0.01:
            pass
        time.sleep((1 - duty) * 0.01)
for _ in range(n - 1):
    mp.Process(target=spin, daemon=True).start()
spin()
PY
    BURNER=$!
}

bench() { # bench NAME SEED
    "${CLIENT_CPU[@]}" /usr/bin/time -f "%U %S %e" -o "$OUT/$1.time" \
        "$BIN" bench --url "$URL" --model "$MODEL" --concurrency "$C" --num-requests "$N" \
        --input-len "$ISL" --output-len "$OSL" --warmup 1 --seed "$2" \
        --json "$OUT/$1.json" --plot "$OUT/$1.png" >"$OUT/$1.txt"
}

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: aiperf (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    rm -rf "$OUT/aiperf-$r"
    "${CLIENT_CPU[@]}" /usr/bin/time -f "%U %S %e" -o "$OUT/aiperf-$r.time" \
        "$VENV/bin/aiperf" profile --model "$MODEL" --tokenizer "$OUT/tokenizer" --url "$URL" \
        --endpoint-type completions --streaming --concurrency "$C" --request-count "$N" \
        --isl "$ISL" --isl-stddev 0 --osl "$OSL" --osl-stddev 0 \
        --extra-inputs ignore_eos:true --extra-inputs "max_tokens:$OSL" \
        --extra-inputs temperature:0 --num-dataset-entries $((N + 1)) \
        --workers-max 1 --record-processors 1 \
        --use-server-token-count --random-seed "$r" --warmup-request-count 1 \
        --no-server-metrics --no-gpu-telemetry --ui-type none \
        --artifact-dir "$OUT/aiperf-$r" >"$OUT/aiperf-$r.log" 2>&1
    echo "round $r: pdserve bench (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    bench "pdserve-$r" "$r"
    if [ "$PIN" = 1 ]; then
        cp "$OUT/pdserve-$r.json" "$OUT/pdserve-burn-$r.json" # no burner when pinned
        continue
    fi
    frac=$(awk '{printf "%.2f", ($1 + $2) / $3}' "$OUT/aiperf-$r.time")
    echo "round $r: pdserve bench beside a CPU burner at aiperf's $frac cores"
    burn "$frac"
    bench "pdserve-burn-$r" "$r"
    kill "$BURNER" 2>/dev/null || true
    wait "$BURNER" 2>/dev/null || true
done

python3 - "$OUT" "$ROUNDS" "$PIN" <<'EOF'
import json, sys
out, rounds, pinned = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
rows = [
    ("TTFT p50 (ms)", ("ttft_ms", "p50"), ("time_to_first_token", "p50")),
    ("TTFT p99 (ms)", ("ttft_ms", "p99"), ("time_to_first_token", "p99")),
    ("ITL p50 (ms), per chunk gap", ("itl_ms", "p50"), ("inter_chunk_latency", "p50")),
    ("TPOT p50 (ms)", ("tpot_ms", "p50"), ("inter_token_latency", "p50")),
    ("tok/s per user p50", ("user_tok_s", "p50"), ("output_token_throughput_per_user", "p50")),
    ("E2E p50 (ms)", ("e2e_ms", "p50"), ("request_latency", "p50")),
    ("output tok/s", ("output_throughput", None), ("output_token_throughput", "avg")),
    ("requests/s", ("request_throughput", None), ("request_throughput", "avg")),
]
def cpu(path):
    u, s, e = open(path).read().split()[-3:]
    return float(u) + float(s), float(e)
# Pinned runs have no burner column: each client had a core of its own.
cols = 5 if pinned else 7
print("| round | figure | aiperf | pdserve bench | ratio |"
      + ("" if pinned else " pdserve bench, matched client CPU | ratio |"))
print("|---" * cols + "|")
def row(*cells):
    print("| " + " | ".join(str(c) for c in cells[:cols]) + " |")
for r in range(1, rounds + 1):
    ours = json.load(open(f"{out}/pdserve-{r}.json"))["summary"]
    burnt = json.load(open(f"{out}/pdserve-burn-{r}.json"))["summary"]
    theirs = json.load(open(f"{out}/aiperf-{r}/profile_export_aiperf.json"))
    for name, (ok, of), (ak, af) in rows:
        pick = lambda d: d[ok] if of is None else d[ok][of]
        a, m, b = pick(ours), pick(burnt), theirs[ak][af]
        row(r, name, f"{b:.2f}", f"{a:.2f}", f"{a / b:.2f}", f"{m:.2f}", f"{m / b:.2f}")
    (oc, ow), (ac, aw) = cpu(f"{out}/pdserve-{r}.time"), cpu(f"{out}/aiperf-{r}.time")
    row(r, "client CPU s / wall s", f"{ac:.2f} / {aw:.0f}", f"{oc:.2f} / {ow:.0f}", "",
        f"+ burner at {ac / aw:.2f} cores", "")
    row(r, "completed / failed",
        f"{theirs['request_count']['avg']:.0f} / {len(theirs.get('error_summary') or [])}",
        f"{ours['completed']} / {ours['failed']}", "", f"{burnt['completed']} / {burnt['failed']}", "")
EOF
