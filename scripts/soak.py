#!/usr/bin/env python3
"""Soak: steady load against `pdserve serve` (default model) for --duration seconds
while the server's resident memory (VmRSS from /proc/PID/status) is sampled every
--interval seconds; then a least-squares line through the samples taken after
--warmup seconds, and the verdict:

    growth = (fit(end) - fit(first sample after warm-up)) / fit(first sample after warm-up)
    PASS when growth <= --max-growth (5%), no request failed and the server is alive.

Load: --clients threads sending the test_load.py mix (chat and completions,
streaming and not, max_tokens 4-24, seeded RNG) back to back; every reply must be
a complete success (tests/e2e/_oai.py `problems`).

The warm-up covers allocator and tokenizer caches settling (the KV pool is touched
when the engine starts, so it is resident from the first sample).

Prints one table row per sample (elapsed, RSS MiB, requests ok / failed so far) and
the verdict; exit 0 on PASS, 1 on FAIL. scripts/test.sh runs the full 10 minutes
(tests/e2e/test_soak.py).

    ~/.cache/pdserve/venv/bin/python scripts/soak.py [--duration 600] [--interval 10]
        [--warmup 60] [--clients 8] [--bin target/release/pdserve]
"""

import argparse
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))

import requests  # noqa: E402

import _pd  # noqa: E402
from _oai import call, mixed_body, problems  # noqa: E402


class Load:
    """--clients threads sending the mixed load until stop()."""

    def __init__(self, base, model, clients, seed, deadline_s):
        self.base, self.model, self.deadline_s = base, model, deadline_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.count = 0
        self.ok = 0
        self.failed = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _next_body(self):
        with self.lock:
            self.count += 1
            return mixed_body(self.rng, self.model, self.count)

    def _client(self):
        with requests.Session() as s:
            while not self.stop_event.is_set():
                body = self._next_body()
                r = call(s, self.base, body, self.deadline_s)
                bad = problems(body, r)
                with self.lock:
                    if bad:
                        self.failed.append("; ".join(bad))
                    else:
                        self.ok += 1

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(self.deadline_s + 30)
        return not any(t.is_alive() for t in self.threads)


def linear_fit(points):
    """(slope, intercept) of the least-squares line through [(x, y)]."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def verdict(samples, warmup, max_growth):
    """(growth, message) from [(t, rss_kib, ok, failed)] samples."""
    after = [(t, rss) for t, rss, _, _ in samples if t >= warmup]
    if len(after) < 3:
        return None, f"only {len(after)} samples after the {warmup:g} s warm-up (need 3)"
    slope, icpt = linear_fit(after)
    t0, t1 = after[0][0], after[-1][0]
    start = slope * t0 + icpt
    growth = slope * (t1 - t0) / start
    return growth, (f"RSS trend after warm-up: {slope * 60 / 1024:+.2f} MiB/min, "
                    f"{start / 1024:.1f} -> {(slope * t1 + icpt) / 1024:.1f} MiB over "
                    f"{t1 - t0:.0f} s = {growth * 100:+.2f}% (limit {max_growth * 100:.0f}%)")


def sample_loop(proc, load, duration, interval):
    """Samples RSS every `interval` s for `duration` s: [(t, rss_kib, ok, failed)]."""
    print(f"{'elapsed s':>9}  {'RSS MiB':>8}  {'ok':>6}  {'failed':>6}", flush=True)
    out = []
    t_start = time.monotonic()
    next_at = t_start
    while True:
        now = time.monotonic()
        t = now - t_start
        rss = _pd.rss_kib(proc.pid)
        if rss is None:
            break
        with load.lock:
            row = (t, rss, load.ok, len(load.failed))
        out.append(row)
        print(f"{t:9.0f}  {rss / 1024:8.1f}  {row[2]:6d}  {row[3]:6d}", flush=True)
        if t >= duration:
            break
        next_at += interval
        time.sleep(max(0.0, min(next_at, t_start + duration) - time.monotonic()))
    return out


def run(args):
    """The soak; returns 0 (PASS) or 1 (FAIL)."""
    _pd.BIN = args.bin
    _pd.require_binary()
    _pd.watchdog(args.duration + 600, "the soak")
    proc, base, model = _pd.serve("serve-soak", args.serve_arg)
    print(f"soak: {args.duration:g} s, {args.clients} clients, RSS every {args.interval:g} s, "
          f"warm-up {args.warmup:g} s, server pid {proc.pid}", flush=True)
    load = Load(base, model, args.clients, args.seed, args.request_deadline)
    samples = sample_loop(proc, load, args.duration, args.interval)
    finished = load.stop()
    growth, msg = verdict(samples, args.warmup, args.max_growth)
    print(msg)
    print(f"requests: {load.ok} ok, {len(load.failed)} failed; "
          f"{load.ok / max(samples[-1][0], 1e-9):.2f} req/s" if samples else "no samples")
    for f in load.failed[:5]:
        print(f"  failed: {f}")
    problems_found = []
    if growth is None or growth > args.max_growth:
        problems_found.append("memory grew beyond the limit" if growth is not None else msg)
    if load.failed:
        problems_found.append(f"{len(load.failed)} requests failed")
    if not finished:
        problems_found.append("clients still busy after their deadline")
    if not proc.alive():
        problems_found.append(f"the server exited ({proc.p.returncode})")
    if problems_found:
        _pd._keep_logs.append("soak")
        print(f"VERDICT: FAIL ({'; '.join(problems_found)})\n--- server log:\n{proc.tail(20)}")
        return 1
    print("VERDICT: PASS")
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("PDSERVE_BIN", "target/release/pdserve"))
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60.0, help="samples before this are not fitted")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-growth", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--request-deadline", type=float, default=120.0)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for `pdserve serve` (repeatable)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args()))
