#!/usr/bin/env python3
"""Disaggregation under interference.

K short requests stream tokens (/v1/completions, "stream": true, ignore_eos) while
long prompts (random token ids, so that no prefix cache helps) arrive on a seeded
schedule. The inter-token latency (time between SSE data frames) of the short
streams is measured in two configurations with the same two cores:

  A  aggregated:     `serve` (1 decode worker, no prefill worker) pinned to cores
                     0-1, RAYON_NUM_THREADS=2: long prefills share the engine step
                     with the decodes;
  B  disaggregated:  `frontend` + decode `worker` pinned to core 0 and a prefill
                     `worker` pinned to core 1 (RAYON_NUM_THREADS=1 each), joined
                     by --seed, --max-local-prefill-length below the long prompts.

Reported per configuration: ITL p50/p99/max of the short streams, their TTFT, the
long prompts' TTFT and end-to-end time, and how many long prompts were prefilled
remotely (delta of pdserve_prefill_total{location="remote"} on /metrics); then the
ratios B/A. The same request schedule (seeded) runs in both.

Bounded: each configuration runs --duration seconds of load with --rounds long
prompts, every HTTP call has a timeout, every wait has a deadline. Loopback only.
Every process started is killed at exit (also on SIGINT/SIGTERM).

    ~/.cache/pdserve/venv/bin/python scripts/bench-interference.py \
        --bin target/release/pdserve --duration 40 --rounds 8 [--json]

The client runs unpinned on the same machine; on a machine shared with other work
the figures are noisy: compare A and B from the same run.
"""

import argparse
import atexit
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

# Short prompts of the streaming clients (a few tokens each).
SHORT_PROMPTS = [
    "Once upon a time",
    "The weather today is",
    "Write a short poem about the sea.",
    "List three colours:",
    "The best way to learn is",
    "In a small village there lived",
    "Explain why the sky is blue.",
    "My favourite food is",
]

_procs = []


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
    for p in _procs:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def log(msg, quiet=False):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One pdserve process pinned with taskset, its output in a log file."""

    def __init__(self, name, binary, cores, threads, args, log_dir, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        e = dict(os.environ)
        e["RAYON_NUM_THREADS"] = str(threads)
        e.setdefault("RUST_LOG", "warn")
        e.update(env or {})
        with open(self.log_path, "ab") as out:
            self.p = subprocess.Popen(
                ["taskset", "-c", cores, binary] + args,
                stdout=out, stderr=subprocess.STDOUT, env=e,
            )
        _procs.append(self.p)

    def alive(self):
        return self.p.poll() is None

    def tail(self, n=30):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])

    def stop(self, grace=15):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)


class BenchError(Exception):
    pass


def wait_until(what, pred, timeout, nodes):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for n in nodes:
            if not n.alive():
                raise BenchError(f"{n.name} exited ({n.p.returncode}) waiting for {what}:\n"
                                 f"{n.tail()}")
        try:
            if pred():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


def metric(base, name, labels=None):
    """Sum of the samples of `name` whose labels include `labels`."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        got = {}
        for part in label_text.rstrip("}").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                got[k] = v.strip('"')
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(value)
    return total


def stream_completion(base, model, prompt, max_tokens, timeout):
    """Runs one streaming completion. Returns (ttft, [gaps], ok, error): times in
    seconds from the request to the first data frame and between data frames."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
        "temperature": 0, "ignore_eos": True,
    }
    t0 = time.perf_counter()
    stamps = []
    try:
        with requests.post(f"{base}/v1/completions", json=body, stream=True,
                           timeout=timeout) as r:
            if r.status_code != 200:
                return None, [], False, f"HTTP {r.status_code}: {r.text[:200]}"
            buf = b""
            done = False
            for chunk in r.iter_content(chunk_size=None):
                now = time.perf_counter()
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    if not frame.startswith(b"data: "):
                        continue
                    data = frame[6:]
                    if data == b"[DONE]":
                        done = True
                        continue
                    if data.startswith(b'{"error"'):
                        return None, [], False, data[:200].decode("utf-8", "replace")
                    stamps.append(now)
                if time.perf_counter() - t0 > timeout:
                    return None, [], False, "client timeout"
            if not done or not stamps:
                return None, [], False, "stream ended without [DONE] or data"
    except requests.RequestException as e:
        return None, [], False, str(e)[:200]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return stamps[0] - t0, gaps, True, None


def percentile(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def make_schedule(args):
    """Everything random about a run, drawn once from --seed: long prompts (token
    ids), their arrival offsets, the short prompts of each stream."""
    rng = random.Random(args.seed)
    period = args.duration / args.rounds
    longs = []
    for i in range(args.rounds):
        at = i * period + rng.uniform(0.1, 0.6) * period
        tokens = [rng.randrange(200, 49000) for _ in range(args.long_tokens)]
        longs.append((at, tokens))
    shorts = [[f"{rng.choice(SHORT_PROMPTS)} ({j}.{k})" for k in range(1000)]
              for j in range(args.streams)]
    warm = [[rng.randrange(200, 49000) for _ in range(args.long_tokens)] for _ in range(20)]
    return {"longs": longs, "shorts": shorts, "warm": warm}


def start_config(name, args, log_dir):
    """Starts configuration A or B; returns (base URL, nodes)."""
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    common = ["--model", args.model, "--offline",
              "--max-local-prefill-length", str(args.max_local_prefill_length)]
    if args.kv_cache_mb:
        common += ["--kv-cache-mb", str(args.kv_cache_mb)]
    if name == "A":
        nodes = [Node("A-serve", args.bin, "0,1", 2,
                      ["serve", "--http-port", str(http)] + common, log_dir)]
    else:
        seed = f"127.0.0.1:{free_port()}"
        env = {"PDSERVE_CLUSTER_COOKIE": f"bench-{os.getpid()}"}
        nodes = [
            Node("B-frontend", args.bin, "0", 1,
                 ["frontend", "--http-port", str(http), "--cluster-listen", seed, "--offline"],
                 log_dir, env),
            Node("B-decode", args.bin, "0", 1,
                 ["worker", "--role", "decode", "--cluster-listen", "127.0.0.1:0",
                  "--seed", seed] + common, log_dir, env),
            Node("B-prefill", args.bin, "1", 1,
                 ["worker", "--role", "prefill", "--cluster-listen", "127.0.0.1:0",
                  "--seed", seed] + common, log_dir, env),
        ]
    return base, nodes


def warm_up(name, base, model, sched, args, nodes):
    """One short stream and one long prompt (B: long prompts until one went remote,
    i.e. the prefill worker is known to the decode worker)."""
    ttft, _, ok, err = stream_completion(base, model, "Hello", 8, args.request_timeout)
    if not ok:
        raise BenchError(f"{name}: warm-up stream failed: {err}")
    deadline = time.time() + args.startup_timeout
    for tokens in sched["warm"]:
        _, _, ok, err = stream_completion(base, model, tokens, 2, args.request_timeout)
        if not ok:
            raise BenchError(f"{name}: warm-up long prompt failed: {err}")
        if name == "A" or metric(base, "pdserve_prefill_total", {"location": "remote"}) >= 1:
            return
        if time.time() > deadline:
            break
        for n in nodes:
            if not n.alive():
                raise BenchError(f"{n.name} exited:\n{n.tail()}")
        time.sleep(1)
    raise BenchError(f"{name}: no long prompt went remote during warm-up")


def run_load(base, model, sched, args):
    """The measured phase: K streams for --duration s, long prompts on schedule."""
    lock = threading.Lock()
    res = {"gaps": [], "short_ttft": [], "short_ok": 0, "errors": [],
           "long_ttft": [], "long_e2e": []}
    t0 = time.perf_counter()
    end = t0 + args.duration

    def streamer(j):
        k = 0
        while time.perf_counter() < end and k < len(sched["shorts"][j]):
            ttft, gaps, ok, err = stream_completion(
                base, model, sched["shorts"][j][k], args.gen_tokens, args.request_timeout)
            k += 1
            with lock:
                if ok:
                    res["short_ok"] += 1
                    res["short_ttft"].append(ttft)
                    res["gaps"].extend(gaps)
                else:
                    res["errors"].append(f"short: {err}")

    def long_one(tokens):
        t = time.perf_counter()
        ttft, _, ok, err = stream_completion(
            base, model, tokens, args.long_max_tokens, args.request_timeout)
        with lock:
            if ok:
                res["long_ttft"].append(ttft)
                res["long_e2e"].append(time.perf_counter() - t)
            else:
                res["errors"].append(f"long: {err}")

    threads = [threading.Thread(target=streamer, args=(j,), daemon=True)
               for j in range(args.streams)]
    for th in threads:
        th.start()
    longs = []
    for at, tokens in sched["longs"]:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=long_one, args=(tokens,), daemon=True)
        th.start()
        longs.append(th)
    join_end = end + args.request_timeout
    for th in threads + longs:
        th.join(timeout=max(0.0, join_end - time.perf_counter()))
    if any(th.is_alive() for th in threads + longs):
        res["errors"].append("some clients were still running at the deadline")
    res["wall_s"] = time.perf_counter() - t0
    return res


def summarize(res, remote, local, args):
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    g = res["gaps"]
    return {
        "itl_ms": {"p50": ms(percentile(g, 0.5)), "p90": ms(percentile(g, 0.9)),
                   "p99": ms(percentile(g, 0.99)), "max": ms(max(g) if g else None),
                   "samples": len(g)},
        "short_requests": res["short_ok"],
        "short_ttft_ms": {"p50": ms(percentile(res["short_ttft"], 0.5)),
                          "p99": ms(percentile(res["short_ttft"], 0.99))},
        "long_requests": len(res["long_ttft"]),
        "long_ttft_ms": {"p50": ms(percentile(res["long_ttft"], 0.5)),
                         "max": ms(max(res["long_ttft"]) if res["long_ttft"] else None)},
        "long_e2e_ms": {"p50": ms(percentile(res["long_e2e"], 0.5))},
        "prefill_remote": int(remote),
        "prefill_local": int(local),
        "errors": res["errors"][:10],
        "error_count": len(res["errors"]),
        "wall_s": round(res["wall_s"], 1),
    }


def run_config(name, args, sched, log_dir):
    base, nodes = start_config(name, args, log_dir)
    try:
        wait_until(f"{name} /health 200",
                   lambda: requests.get(f"{base}/health", timeout=2).status_code == 200,
                   args.startup_timeout, nodes)
        models = requests.get(f"{base}/v1/models", timeout=5).json()["data"]
        model = models[0]["id"]
        log(f"[{name}] up, model {model!r}; warming up", args.json)
        warm_up(name, base, model, sched, args, nodes)
        r0 = metric(base, "pdserve_prefill_total", {"location": "remote"})
        l0 = metric(base, "pdserve_prefill_total", {"location": "local"})
        log(f"[{name}] load: {args.streams} streams x {args.gen_tokens} tokens, "
            f"{args.rounds} long prompts of {args.long_tokens} tokens in {args.duration}s",
            args.json)
        res = run_load(base, model, sched, args)
        remote = metric(base, "pdserve_prefill_total", {"location": "remote"}) - r0
        local = metric(base, "pdserve_prefill_total", {"location": "local"}) - l0
        for n in nodes:
            if not n.alive():
                raise BenchError(f"{n.name} died during the load:\n{n.tail()}")
        return summarize(res, remote, local, args)
    finally:
        for n in reversed(nodes):
            n.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("PDSERVE_BIN", "target/release/pdserve"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--duration", type=float, default=40.0,
                    help="seconds of load per configuration")
    ap.add_argument("--rounds", type=int, default=8,
                    help="long prompts per configuration (spread over --duration)")
    ap.add_argument("--streams", type=int, default=4, help="concurrent short streams (K)")
    ap.add_argument("--gen-tokens", type=int, default=128, help="tokens per short stream")
    ap.add_argument("--long-tokens", type=int, default=1536, help="tokens per long prompt")
    ap.add_argument("--long-max-tokens", type=int, default=16,
                    help="tokens generated for each long prompt")
    ap.add_argument("--max-local-prefill-length", type=int, default=256)
    ap.add_argument("--kv-cache-mb", type=int, default=0, help="0: the engine's default")
    ap.add_argument("--configs", default="A,B", help="which of A,B to run, in order")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true", help="print only a JSON object")
    args = ap.parse_args()
    if not os.path.isfile(args.bin):
        sys.exit(f"no pdserve binary at {args.bin} (--bin)")
    if args.rounds < 1 or args.duration <= 0 or args.streams < 1:
        sys.exit("--rounds, --duration and --streams must be positive")
    if args.long_tokens <= args.max_local_prefill_length:
        sys.exit("--long-tokens must exceed --max-local-prefill-length")
    if os.cpu_count() and os.cpu_count() < 2:
        sys.exit("needs two cores (0 and 1)")

    sched = make_schedule(args)
    log_dir = tempfile.mkdtemp(prefix="pdserve-bench-interference-")
    log(f"logs in {log_dir}", args.json)
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
           "configs": {}}
    try:
        for name in [c.strip().upper() for c in args.configs.split(",") if c.strip()]:
            if name not in ("A", "B"):
                sys.exit(f"unknown configuration {name!r} (A or B)")
            out["configs"][name] = run_config(name, args, sched, log_dir)
    except BenchError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)

    a, b = out["configs"].get("A"), out["configs"].get("B")
    if a and b:
        def ratio(x, y):
            return round(y / x, 3) if x and y else None
        out["ratio_b_over_a"] = {
            "itl_p50": ratio(a["itl_ms"]["p50"], b["itl_ms"]["p50"]),
            "itl_p99": ratio(a["itl_ms"]["p99"], b["itl_ms"]["p99"]),
            "long_ttft_p50": ratio(a["long_ttft_ms"]["p50"], b["long_ttft_ms"]["p50"]),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'':3} {'ITL p50':>9} {'ITL p99':>9} {'ITL max':>9} {'gaps':>6} "
          f"{'short TTFT p50':>15} {'long TTFT p50':>14} {'long TTFT max':>14} "
          f"{'remote':>7} {'errors':>6}")
    for name, c in out["configs"].items():
        f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{name:3} {f(c['itl_ms']['p50']):>9} {f(c['itl_ms']['p99']):>9} "
              f"{f(c['itl_ms']['max']):>9} {c['itl_ms']['samples']:>6} "
              f"{f(c['short_ttft_ms']['p50']):>15} {f(c['long_ttft_ms']['p50']):>14} "
              f"{f(c['long_ttft_ms']['max']):>14} "
              f"{c['prefill_remote']:>3}/{c['long_requests']:<3} {c['error_count']:>6}")
    print("(milliseconds; remote = long prompts prefilled by the prefill worker / long "
          "prompts answered)")
    if "ratio_b_over_a" in out:
        r = out["ratio_b_over_a"]
        print(f"B/A: ITL p50 {r['itl_p50']}, ITL p99 {r['itl_p99']}, "
              f"long TTFT p50 {r['long_ttft_p50']}")
    for name, c in out["configs"].items():
        for e in c["errors"]:
            print(f"{name} error: {e}")


if __name__ == "__main__":
    main()
