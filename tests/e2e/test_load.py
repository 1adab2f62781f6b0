"""Load: `pdserve serve` (default model) under 64 concurrent clients sending 1,000
requests of mixed shapes, drawn from a seeded RNG — chat and completions, streaming
and not, prompts of 2-40 words (a fifth of them behind one shared system prompt,
for prefix-cache hits), max_tokens 4-24, half with ignore_eos and logprobs, some
with n=2, sampled or greedy, a few with stop strings.

Checks, all exact:
- zero errors: every reply is HTTP 200 and complete — each choice has a
  finish_reason, streams end with [DONE] and carry usage; with logprobs on,
  usage.completion_tokens equals the tokens received; with ignore_eos, every choice
  has exactly max_tokens tokens and finish_reason "length";
- afterwards the server is idle: pdserve_requests_inflight 0 and, per worker,
  KV blocks used, running, queued and prefill-queued all 0 (every block freed);
- /metrics agrees with the clients: pdserve_http_requests_total grew by exactly
  the requests sent per endpoint, all with status 200; generation and prompt token
  counters grew by the sums of the replies' usage (prompt × n); no stream errors,
  no cancellations.

Prints requests ok/failed, wall time, p50/p99 latency, tokens/s.
Usage: python tests/e2e/test_load.py [--requests N] [--clients N] [--seed S]
"""

import argparse
import random
import sys
import threading
import time

from _oai import mixed_body, percentile, problems, run_pool, tally
from _pd import fail, require_binary, samples, select, serve, wait_idle, watchdog

def counters(base):
    """The counters the test compares before and after the load."""
    smp = samples(base)
    c = {f"http {ls['endpoint']} {ls['status']}": v
         for ls, v in select(smp, "pdserve_http_requests_total")
         if ls["endpoint"] in ("chat_completions", "completions")}
    for name in ("pdserve_generation_tokens_total", "pdserve_prompt_tokens_total",
                 "pdserve_stream_errors_total", "pdserve_requests_cancelled_total"):
        c[name] = sum(v for _, v in select(smp, name))
    return c


def expected_growth(results):
    want = {"http chat_completions 200": 0, "http completions 200": 0,
            "pdserve_generation_tokens_total": 0, "pdserve_prompt_tokens_total": 0,
            "pdserve_stream_errors_total": 0, "pdserve_requests_cancelled_total": 0}
    for body, r in results:
        ep = "chat_completions" if "messages" in body else "completions"
        want[f"http {ep} 200"] += 1
        want["pdserve_generation_tokens_total"] += r.usage["completion_tokens"]
        want["pdserve_prompt_tokens_total"] += r.usage["prompt_tokens"] * body.get("n", 1)
    return want


def check_metrics(before, after, results, procs):
    want = expected_growth(results)
    keys = sorted(set(after) | set(before) | set(want))
    bad = [f"{k}: grew by {after.get(k, 0) - before.get(k, 0):g}, expected {want.get(k, 0)}"
           for k in keys if after.get(k, 0) - before.get(k, 0) != want.get(k, 0)]
    if bad:
        fail("/metrics disagrees with the replies:\n  " + "\n  ".join(bad), procs)


class Peaks:
    """Samples /metrics every second during the load: the highest in-flight count
    and KV blocks used (so that "back to 0" afterwards means something)."""

    def __init__(self, base):
        self.base = base
        self.inflight = self.kv_used = self.kv_total = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(1.0):
            try:
                smp = samples(self.base)
            except Exception:
                continue
            used = sum(v for _, v in select(smp, "pdserve_worker_kv_used_blocks"))
            self.kv_used = max(self.kv_used, used)
            self.kv_total = sum(v for _, v in select(smp, "pdserve_worker_kv_total_blocks"))
            self.inflight = max(self.inflight,
                                sum(v for _, v in select(smp, "pdserve_requests_inflight")))

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        print(f"peak during the load: {self.inflight:g} requests in flight, "
              f"{self.kv_used:g} of {self.kv_total:g} KV blocks used")


def summary(results, wall):
    lat = [r.latency for _, r in results]
    toks = sum((r.usage or {}).get("completion_tokens", 0) for _, r in results)
    t = tally(results)
    print(f"requests: {len(results)} sent, {t['ok']} ok, {len(results) - t['ok']} failed "
          f"({', '.join(f'{k} {v}' for k, v in t.items() if v and k != 'ok') or 'none'})")
    print(f"wall {wall:.1f} s, {len(results) / wall:.2f} req/s, {toks / wall:.1f} generated tok/s; "
          f"latency p50 {percentile(lat, 0.5):.2f} s, p99 {percentile(lat, 0.99):.2f} s, "
          f"max {max(lat):.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--deadline", type=float, default=300.0, help="per request, seconds")
    args = ap.parse_args()
    require_binary()
    watchdog(1200, "test_load")
    proc, base, model = serve("serve-load")
    rng = random.Random(args.seed)
    bodies = [mixed_body(rng, model, i) for i in range(args.requests)]
    before = counters(base)
    peaks = Peaks(base)
    t0 = time.monotonic()
    results = run_pool(base, bodies, args.clients, args.deadline)
    wall = time.monotonic() - t0
    peaks.finish()
    summary(results, wall)
    if peaks.inflight < 1 or peaks.kv_used < 1:
        fail("the in-flight and KV gauges never moved during the load", [proc])
    bad = [(b, r, p) for b, r in results for p in [problems(b, r)] if p]
    for b, r, p in bad[:10]:
        print(f"  {'; '.join(p)}\n    request: {str(b)[:200]}")
    if bad:
        fail(f"{len(bad)} of {len(results)} replies were not complete successes", [proc])
    wait_idle(base, 30, [proc])
    check_metrics(before, counters(base), results, [proc])
    if not proc.alive():
        fail("the server exited", [proc])
    print("idle afterwards: inflight 0, every KV block free; /metrics matches the replies")
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
