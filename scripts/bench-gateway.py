#!/usr/bin/env python3
"""Gateway overhead under 64 concurrent streaming clients (issue 4's benchmark).

Starts `pdserve serve` on the default model (loopback, a free port), runs
--clients concurrent clients that each send --requests streaming completions one
after another (short prompts of about 16 tokens, --max-tokens tokens each), then
reads from /metrics the server-side histogram pdserve_gateway_overhead_seconds
{stream="true"}: per request, (handler start → backend submit) + (the backend event
the first body byte is made from → that byte handed to hyper), engine time
excluded (see gateway/src/generate.rs, `record_first_byte`). Reported: p50/p90/p99
read off the histogram's buckets (linear within a bucket, as Prometheus'
histogram_quantile), the exact mean (sum/count), and client-side time to first
data frame and request time for reference.

Checks (exit 1 when one fails): every request answered 200 with a complete stream
(`[DONE]`, no error frame); no 5xx in pdserve_http_requests_total; the server is
still up (/health 200) afterwards; the histogram counted every request.

Bounded: every HTTP call has a timeout, every wait a deadline; the server is
killed at exit (also on SIGINT/SIGTERM).

    ~/.cache/pdserve/venv/bin/python scripts/bench-gateway.py \
        --bin target/release/pdserve --clients 64 --requests 4 [--json]
"""

import argparse
import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

HIST = "pdserve_gateway_overhead_seconds"

# ~16 tokens each with the default model's tokenizer; a different one per request
# keeps the prefix cache from making prompts free.
PROMPT = "Request {i}: tell me a short story about a small robot who learns to paint"

_procs = []


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(base):
    """Every sample of /metrics as (name, {label: value}, value)."""
    out = []
    text = requests.get(f"{base}/metrics", timeout=10).text
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, label_text = head.partition("{")
        labels = {}
        for part in label_text.rstrip("}").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                labels[k] = v.strip('"')
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            pass
    return out


def histogram(smp, name, labels):
    """(buckets [(le, cumulative)], sum, count) of one histogram series, or None."""
    buckets, total, count = [], None, None
    for n, ls, v in smp:
        if any(ls.get(k) != want for k, want in labels.items()):
            continue
        if n == f"{name}_bucket":
            le = float("inf") if ls["le"] == "+Inf" else float(ls["le"])
            buckets.append((le, v))
        elif n == f"{name}_sum":
            total = v
        elif n == f"{name}_count":
            count = v
    if count is None:
        return None
    return sorted(buckets), total, count


def diff_hist(after, before):
    if before is None:
        return after
    b = dict(before[0])
    return ([(le, c - b.get(le, 0.0)) for le, c in after[0]],
            after[1] - before[1], after[2] - before[2])


def bucket_quantile(buckets, q):
    """Prometheus-style quantile of cumulative buckets (linear inside a bucket)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lo_bound  # above the largest finite bound
            if c == lo_count:
                return le
            return lo_bound + (le - lo_bound) * (rank - lo_count) / (c - lo_count)
        lo_bound, lo_count = le, c
    return lo_bound


def percentile(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stream_once(session, base, model, prompt, max_tokens, timeout):
    """One streaming completion: (status, ttfb, first data, total, error or None)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "temperature": 0, "ignore_eos": True}
    t0 = time.perf_counter()
    first = None
    try:
        with session.post(f"{base}/v1/completions", json=body, stream=True,
                          timeout=timeout) as r:
            ttfb = time.perf_counter() - t0
            if r.status_code != 200:
                return r.status_code, ttfb, None, None, r.text[:200]
            buf, done = b"", False
            for chunk in r.iter_content(chunk_size=None):
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    data = frame[6:] if frame.startswith(b"data: ") else None
                    if data is None:
                        continue
                    if data == b"[DONE]":
                        done = True
                    elif data.startswith(b'{"error"'):
                        return 200, ttfb, first, None, data[:200].decode("utf-8", "replace")
                    elif first is None:
                        first = time.perf_counter() - t0
                if time.perf_counter() - t0 > timeout:
                    return 200, ttfb, first, None, "client timeout"
            if not done:
                return 200, ttfb, first, None, "stream ended without [DONE]"
            return 200, ttfb, first, time.perf_counter() - t0, None
    except requests.RequestException as e:
        return None, None, None, None, f"{type(e).__name__}: {str(e)[:160]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("PDSERVE_BIN", "target/release/pdserve"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for `pdserve serve` (repeatable)")
    ap.add_argument("--json", action="store_true", help="print only a JSON object")
    args = ap.parse_args()
    if not os.path.isfile(args.bin):
        sys.exit(f"no pdserve binary at {args.bin} (--bin)")
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1:
        sys.exit("--clients, --requests and --max-tokens must be positive")

    def say(msg):
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    log_dir = tempfile.mkdtemp(prefix="pdserve-bench-gateway-")
    log_path = os.path.join(log_dir, "serve.log")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    with open(log_path, "ab") as out:
        server = subprocess.Popen(
            [args.bin, "serve", "--model", args.model, "--offline", "--http-port", str(port)]
            + args.serve_arg, stdout=out, stderr=subprocess.STDOUT, env=env)
    _procs.append(server)

    def fail(msg):
        with open(log_path, "rb") as f:
            tail = "\n".join(f.read().decode("utf-8", "replace").splitlines()[-30:])
        print(f"FAIL: {msg}\n--- {log_path}:\n{tail}", file=sys.stderr)
        sys.exit(1)

    deadline = time.time() + args.startup_timeout
    while True:
        if server.poll() is not None:
            fail(f"serve exited with {server.returncode} during startup")
        try:
            if requests.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.time() > deadline:
            fail(f"serve not healthy after {args.startup_timeout}s")
        time.sleep(0.2)
    model = requests.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"]
    say(f"serving {model!r} on {base}; logs in {log_dir}")

    # Warm-up (not measured): page in the model, start the engine's threads.
    with requests.Session() as s:
        st, _, _, _, err = stream_once(s, base, model, PROMPT.format(i=-1), 4,
                                       args.request_timeout)
    if st != 200 or err:
        fail(f"warm-up request: status {st}: {err}")

    before = samples(base)
    hist0 = histogram(before, HIST, {"stream": "true"})
    lock = threading.Lock()
    results = []

    def client(c):
        with requests.Session() as s:
            for k in range(args.requests):
                r = stream_once(s, base, model, PROMPT.format(i=c * args.requests + k),
                                args.max_tokens, args.request_timeout)
                with lock:
                    results.append(r)

    say(f"{args.clients} clients x {args.requests} streaming requests x "
        f"{args.max_tokens} tokens")
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,), daemon=True)
               for c in range(args.clients)]
    for th in threads:
        th.start()
    join_end = t0 + args.request_timeout * args.requests + 30
    for th in threads:
        th.join(timeout=max(0.0, join_end - time.perf_counter()))
    wall = time.perf_counter() - t0
    stuck = sum(th.is_alive() for th in threads)

    failures = []
    if stuck:
        failures.append(f"{stuck} clients still running at the deadline")
    if server.poll() is not None:
        fail(f"serve died during the load (exit {server.returncode})")
    try:
        healthy = requests.get(f"{base}/health", timeout=5).status_code == 200
    except requests.RequestException:
        healthy = False
    if not healthy:
        failures.append("/health is not 200 after the load")
    after = samples(base)
    total = args.clients * args.requests
    ok = [r for r in results if r[0] == 200 and r[4] is None]
    non200 = [r for r in results if r[0] != 200]
    bad_streams = [r for r in results if r[0] == 200 and r[4] is not None]
    if len(ok) != total:
        failures.append(f"{total - len(ok)} of {total} requests failed "
                        f"({len(non200)} non-200, {len(bad_streams)} broken streams; "
                        f"first: {(non200 + bad_streams)[0][4] if non200 + bad_streams else 'none'})")

    def count_5xx(smp):
        return sum(v for n, ls, v in smp
                   if n == "pdserve_http_requests_total" and ls.get("status", "").startswith("5"))

    server_5xx = count_5xx(after) - count_5xx(before)
    if server_5xx:
        failures.append(f"{int(server_5xx)} responses with a 5xx status in /metrics")

    hist1 = histogram(after, HIST, {"stream": "true"})
    overhead = None
    if hist1 is None:
        failures.append(f"{HIST} is not exposed by this binary (an older build?)")
    else:
        buckets, hsum, hcount = diff_hist(hist1, hist0)
        if int(hcount) != len(ok):
            failures.append(f"{HIST} counted {int(hcount)} requests, expected {len(ok)}")
        us = lambda v: None if v is None else round(v * 1e6, 1)  # noqa: E731
        overhead = {
            "count": int(hcount),
            "mean_us": us(hsum / hcount) if hcount else None,
            "p50_us": us(bucket_quantile(buckets, 0.5)),
            "p90_us": us(bucket_quantile(buckets, 0.9)),
            "p99_us": us(bucket_quantile(buckets, 0.99)),
        }

    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    firsts = [r[2] for r in ok if r[2] is not None]
    totals = [r[3] for r in ok]
    report = {
        "settings": {"clients": args.clients, "requests_per_client": args.requests,
                     "max_tokens": args.max_tokens, "model": model},
        "requests": total,
        "ok": len(ok),
        "non_200": len(non200),
        "broken_streams": len(bad_streams),
        "server_5xx": int(server_5xx),
        "server_up": server.poll() is None and healthy,
        "gateway_overhead": overhead,
        "client_first_data_ms": {"p50": ms(percentile(firsts, 0.5)),
                                 "p99": ms(percentile(firsts, 0.99))},
        "client_request_ms": {"p50": ms(percentile(totals, 0.5)),
                              "p99": ms(percentile(totals, 0.99))},
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2) if wall > 0 else None,
        "failures": failures,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        o = overhead or {}
        print(f"requests: {len(ok)}/{total} ok, non-200: {len(non200)}, broken streams: "
              f"{len(bad_streams)}, 5xx (server): {int(server_5xx)}, server up: "
              f"{report['server_up']}")
        print(f"gateway overhead (server, engine excluded, {o.get('count')} requests): "
              f"p50 {o.get('p50_us')} us, p90 {o.get('p90_us')} us, p99 {o.get('p99_us')} us, "
              f"mean {o.get('mean_us')} us")
        print(f"client: first data p50 {report['client_first_data_ms']['p50']} ms, p99 "
              f"{report['client_first_data_ms']['p99']} ms; request p50 "
              f"{report['client_request_ms']['p50']} ms, p99 "
              f"{report['client_request_ms']['p99']} ms; {report['requests_per_s']} req/s "
              f"over {report['wall_s']} s")
        for f in failures:
            print(f"FAIL: {f}")
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
