#!/usr/bin/env bash
# `pdserve bench` vs aiperf on the same `pdserve serve` (default model, loopback only).
#
# Usage: bash scripts/bench-vs-aiperf.sh [ROUNDS]      (default 2)
# Env: C (concurrency, 8), N (requests, 64), ISL (128), OSL (32), OUT (results dir,
#      /tmp/pdserve-vs-aiperf), AIPERF_VENV (/tmp/aiperf-venv), PDSERVE_BIN
#      (target/release/pdserve, built when absent).
#
# Each round runs pdserve bench, then aiperf, with the same concurrency, request
# count, input/output lengths, streaming, ignore_eos and one warm-up request; aiperf
# uses the server's token counts and a tokenizer converted from the model's GGUF
# (scripts/gguf_tokenizer_json.py), and its /metrics scraping and GPU telemetry are
# off so that both tools only send requests. Both sample greedily (temperature 0);
# aiperf gets one more prompt than it measures, so its warm-up prompt is not measured
# again (a prefix-cache hit), and one worker and one record processor, so that its
# own CPU use takes as little as it can from the server's cores (on a 2-core machine
# its default pool of processes slowed every server step by ~1.3x: both tools define
# every figure the same way, so that client load was the whole disagreement).
# Alternating rounds expose machine noise.
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
"$BIN" serve --http-port "$PORT" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "$URL/health" >/dev/null && break
    sleep 1
done
MODEL=$(curl -sf "$URL/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "server $URL, model $MODEL; $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: pdserve bench (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    /usr/bin/time -f "%U %S %e" -o "$OUT/pdserve-$r.time" \
        "$BIN" bench --url "$URL" --model "$MODEL" --concurrency "$C" --num-requests "$N" \
        --input-len "$ISL" --output-len "$OSL" --warmup 1 --seed "$r" \
        --json "$OUT/pdserve-$r.json" --plot "$OUT/pdserve-$r.png" >"$OUT/pdserve-$r.txt"
    echo "round $r: aiperf (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    rm -rf "$OUT/aiperf-$r"
    /usr/bin/time -f "%U %S %e" -o "$OUT/aiperf-$r.time" \
        "$VENV/bin/aiperf" profile --model "$MODEL" --tokenizer "$OUT/tokenizer" --url "$URL" \
        --endpoint-type completions --streaming --concurrency "$C" --request-count "$N" \
        --isl "$ISL" --isl-stddev 0 --osl "$OSL" --osl-stddev 0 \
        --extra-inputs ignore_eos:true --extra-inputs "max_tokens:$OSL" \
        --extra-inputs temperature:0 --num-dataset-entries $((N + 1)) \
        --workers-max 1 --record-processors 1 \
        --use-server-token-count --random-seed "$r" --warmup-request-count 1 \
        --no-server-metrics --no-gpu-telemetry --ui-type none \
        --artifact-dir "$OUT/aiperf-$r" >"$OUT/aiperf-$r.log" 2>&1
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
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
print("| round | figure | pdserve bench | aiperf | ratio (pdserve bench / aiperf) |")
print("|---|---|---|---|---|")
for r in range(1, rounds + 1):
    ours = json.load(open(f"{out}/pdserve-{r}.json"))["summary"]
    theirs = json.load(open(f"{out}/aiperf-{r}/profile_export_aiperf.json"))
    for name, (ok, of), (ak, af) in rows:
        a = ours[ok] if of is None else ours[ok][of]
        b = theirs[ak][af]
        print(f"| {r} | {name} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    (oc, ow), (ac, aw) = cpu(f"{out}/pdserve-{r}.time"), cpu(f"{out}/aiperf-{r}.time")
    print(f"| {r} | client CPU s / wall s | {oc:.2f} / {ow:.0f} | {ac:.2f} / {aw:.0f} | {oc / ac:.3f} (CPU) |")
    print(f"| {r} | completed / failed | {ours['completed']} / {ours['failed']} | "
          f"{theirs['request_count']['avg']:.0f} / {len(theirs.get('error_summary') or [])} | |")
EOF
