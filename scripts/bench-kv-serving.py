"""KV transfer time in the serving path, per transport.

For each `--kv-transport` (tcp, nixl), starts a frontend, a decode worker and a
prefill worker on loopback (the e2e harness, tests/e2e/_pd.py), sends long prompts
one at a time (every one prefilled remotely), and reads the prefill worker's
`KV written` debug lines: transport, bytes and milliseconds of each write, from the
first byte read out of the prefill engine to the write's completion (for NIXL: the
WRITE and its notification posted and completed). Prints median and p90 per
transport, and TTFT from the client side.

Usage: ~/.cache/pdserve/venv/bin/python scripts/bench-kv-serving.py [--words 700] [-n 5]
Needs a release binary built with `--features nixl` and libnixl (scripts/fetch-nixl.sh).
"""

import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from _pd import Cluster, chat, fail, long_prompt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--words", type=int, default=700, help="prompt length in words (~1.3 tokens each)")
ap.add_argument("-n", type=int, default=5, help="prompts per transport")
args = ap.parse_args()

LINE = re.compile(r"KV written.*?transport=\"?([a-z-]+)\"?.*?bytes=(\d+).*?ms=([\d.]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
env = {"RUST_LOG": "warn,pdserve=info,pdserve_actors=debug,pdserve_cluster=info"}
print(f"{args.n} prompts of ~{args.words} words per transport; load {os.getloadavg()[0]:.2f}")
for transport in ("tcp", "nixl"):
    c = Cluster(worker_args=["--max-local-prefill-length", "32", "--kv-cache-mb", "256",
                             "--kv-transport", transport], env=env)
    c.start_worker(f"decode-{transport}", "decode")
    prefill = c.start_worker(f"prefill-{transport}", "prefill")
    model = c.wait_ready(180)
    c.warm_until_remote(model, words=args.words)
    time.sleep(0.5)
    skip = len(LINE.findall(ANSI.sub("", prefill.text())))
    ttft = []
    for i in range(args.n):
        t0 = time.monotonic()
        r = chat(c.base, model, long_prompt(1000 + i, words=args.words), max_tokens=1, timeout=300)
        ttft.append((time.monotonic() - t0) * 1e3)
        if r.status_code != 200:
            fail(f"{transport}: HTTP {r.status_code}: {r.text[:200]}", c.procs())
    time.sleep(0.5)
    found = LINE.findall(ANSI.sub("", prefill.text()))[skip:]
    rows = [(t, int(b), float(ms)) for t, b, ms in found]
    if len(rows) != args.n or any(t != transport for t, _, _ in rows):
        fail(f"{transport}: expected {args.n} writes over {transport}, log has {rows}", c.procs())
    ms = sorted(r[2] for r in rows)
    mb = rows[0][1] / 1e6
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    med = statistics.median(ms)
    print(f"{transport:5s} KV write {mb:.1f} MB: median {med:.1f} ms ({mb / med:.2f} GB/s), "
          f"p90 {p90:.1f} ms; request (prefill + write + 1 token) median "
          f"{statistics.median(ttft):.0f} ms")
    for p in c.procs():
        p.kill(15)
    for p in c.procs():
        p.wait(60)
