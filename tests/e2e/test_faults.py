"""Faults under load on a real multi-process cluster: a frontend, two decode workers
(decode-0, decode-1) and one prefill worker, joined by --seed on loopback, with
--max-local-prefill-length 32 (long prompts are prefilled remotely) and
--remote-prefill-timeout-s 5. Load: concurrent streaming chat clients, each prompt
long (~180 tokens) and unique (no prefix-cache hits), ignore_eos + logprobs so
every reply's token count is known exactly.

Scenarios (run in this order by default; name some to run only those):
  stop-prefill   SIGSTOP the prefill worker while it holds prefills (a hung peer):
                 the 5 s deadline fires, decode prefills locally, every request
                 completes; after SIGCONT the worker takes remote prefills again.
  kill-prefill   SIGKILL the prefill worker while it holds prefills: every request
                 completes (decode prefills locally).
  kill-decode    SIGKILL decode-1 while it streams: requests not yet streaming are
                 routed again and complete; those streaming from it end with an
                 error frame then [DONE] (or an error status), service_unavailable;
                 none hangs or breaks; requests sent 2 s after the fault or later all
                 complete; the lost worker leaves the frontend's /metrics.
  restart        start the killed workers again (same addresses; run alone, it kills
                 them first): they rejoin, the remote prefill counter grows again
                 and requests run on the restarted decode worker (its
                 pdserve_worker_running_requests > 0 at some scrape).

After the first three, prompts answered before the fault are sent again: greedy
answers must be identical (no fault left wrong KV data in a prefix cache).

Before them: the first request, sent once every worker shows in /metrics (and
before anything asked the frontend for its models), must be served.

Each scenario prints: requests completed, failed, hung (must be 0, as must broken
streams); "served normally again": seconds from the fault until the first request
sent after it completed; how long the requests in flight at the fault took to
settle; median latency before and after the fault.

Usage: python tests/e2e/test_faults.py [stop-prefill|kill-prefill|kill-decode|restart ...]
"""

import itertools
import signal
import sys
import threading
import time

from _oai import percentile, problems, run_pool, tally
from _pd import Cluster, fail, long_prompt, per_worker, require_binary, watchdog

CLIENTS = 6
DEADLINE_S = 90  # per request, client side
_prompt_ids = itertools.count(1000)
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print(f"  CHECK FAILED: {msg}", flush=True)
    return cond


def wait_for(pred, timeout, step=0.05):
    """Polls pred until true (True) or timeout (False); never fails the test."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


def body(model, max_tokens):
    return {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": long_prompt(next(_prompt_ids))}]}


class Load:
    """CLIENTS streaming clients in the background until stop() (at most `cap`
    requests in all); `done` holds (body, reply) as replies complete."""

    def __init__(self, base, model, max_tokens=16, cap=150):
        self.base = base
        self.bodies = [body(model, max_tokens) for _ in range(cap)]
        self.stop_event = threading.Event()
        self.done = []
        self.results = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.results = run_pool(self.base, self.bodies, CLIENTS, DEADLINE_S,
                                on_reply=lambda b, r: self.done.append((b, r)),
                                stop=self.stop_event)

    def ok_since(self, t):
        return sum(1 for _, r in list(self.done) if r.kind == "ok" and r.started >= t)

    def warm(self, n=3, timeout=120):
        """Waits until n requests completed (a latency baseline before a fault)."""
        check(wait_for(lambda: self.ok_since(0) >= n, timeout, 0.2),
              f"{n} requests did not complete within {timeout} s before the fault")

    def after_fault(self, t_fault, min_s, n=3, timeout=120):
        """Keeps the load on for min_s after the fault, and until n requests sent
        after it completed (at most `timeout` s)."""
        time.sleep(max(0.0, t_fault + min_s - time.monotonic()))
        wait_for(lambda: self.ok_since(t_fault) >= n, timeout, 0.2)

    def stop(self, procs):
        self.stop_event.set()
        self.thread.join(DEADLINE_S + 30)
        if self.thread.is_alive():
            fail("load clients did not finish within their deadline", procs)
        return self.results


def timeline(results, t_fault):
    """(requests in flight at the fault, seconds until the last of them ended,
    requests sent after it, seconds until the first of those completed)."""
    during = [r for _, r in results if r.started < t_fault < r.ended]
    after = [r for _, r in results if r.started >= t_fault]
    settled = max((r.ended - t_fault for r in during), default=0.0)
    served = min((r.ended - t_fault for r in after if r.kind == "ok"), default=None)
    return len(during), settled, len(after), served


def p50(xs):
    return f"{percentile(xs, 0.5):.1f} s" if xs else "n/a"


def report(name, results, t_fault, event="the fault"):
    """Prints the scenario's line; checks that nothing hung or broke."""
    t = tally(results)
    failed = t["http_error"] + t["stream_error"]
    n_during, settled, n_after, served = timeline(results, t_fault)
    before = [r.latency for _, r in results if r.kind == "ok" and r.ended < t_fault]
    after = [r.latency for _, r in results if r.kind == "ok" and r.started >= t_fault]
    print(f"[{name}] requests {len(results)}: completed {t['ok']}, failed {failed}, "
          f"broken {t['broken']}, hung {t['hung']}; served normally again "
          f"{'%.1f s' % served if served is not None else 'never (in the window)'} after "
          f"{event} (first request sent after it completed)"
          + (f"; the {n_during} in flight at {event} settled within {settled:.1f} s"
             if n_during else "")
          + f"; latency p50 {p50(before)} before, {p50(after)} after ({n_after} sent)",
          flush=True)
    for b, r in results:
        if r.kind in ("broken", "hung"):
            print(f"    {r.describe()}")
    check(t["hung"] == 0, f"{name}: {t['hung']} requests hung")
    check(t["broken"] == 0, f"{name}: {t['broken']} requests broken")
    check(served is not None, f"{name}: no request sent after the fault completed")
    return t


def all_complete(name, results):
    bad = [(b, r, p) for b, r in results for p in [problems(b, r)] if p]
    for _, _, p in bad[:5]:
        print(f"    {'; '.join(p)}")
    check(not bad, f"{name}: {len(bad)} of {len(results)} requests did not complete")


def replay(name, c, results, t_fault, n=4):
    """Sends again (concurrently) the prompts of up to n requests that completed
    before the fault: under greedy decoding each must give the same text — whether
    it now hits the prefix cache, lands on another worker, or is prefilled
    elsewhere — so no fault left wrong KV data behind."""
    ref = [(b, r) for b, r in results if r.kind == "ok" and r.ended < t_fault][:n]
    again = run_pool(c.base, [b for b, _ in ref], len(ref) or 1, DEADLINE_S)
    same = 0
    for (b, r), (_, r2) in zip(ref, again):
        ok = r2.kind == "ok" and r2.choices.get(0) and r2.choices[0].text == r.choices[0].text
        same += bool(ok)
        check(ok, f"{name}: the same greedy prompt gave another answer after the fault: "
                  f"{r.choices[0].text[:60]!r} then "
                  f"{(r2.choices.get(0).text if r2.choices.get(0) else r2.describe())[:60]!r}")
    print(f"    replayed {len(ref)} greedy prompts from before the fault: {same} identical")


def prefill_holding_work(c):
    label = c.worker_label("prefill")
    return label and per_worker(c.base, "pdserve_worker_prefill_queue_requests",
                                "prefill").get(label, 0) > 0


def remote_grows(c, model, timeout):
    """Sends fresh long prompts one at a time until a remote prefill is counted."""
    before = c.remote_prefills()

    def one():
        run_pool(c.base, [body(model, 2)], 1, DEADLINE_S)
        return c.remote_prefills() > before

    return wait_for(one, timeout, step=0.2)


# ---- scenarios -----------------------------------------------------------------------

def ensure_alive(c, model, names):
    """Starts the named workers that are not running (for scenarios run alone)."""
    started = [n for n in names if not c.proc(n).alive()]
    for n in started:
        c.start_worker(n, c.workers[n][0])
    if started:
        c.wait_listed(started, 120)


def load_with_remote_prefill(c, model, scenario):
    """Starts the load once the prefill worker runs and holds a remote prefill."""
    ensure_alive(c, model, ["prefill"])
    load = Load(c.base, model)
    load.warm()
    check(wait_for(lambda: prefill_holding_work(c), 60), f"{scenario}: no remote prefill started")
    return load


def stop_prefill(c, model):
    load = load_with_remote_prefill(c, model, "stop-prefill")
    t_fault = time.monotonic()
    c.proc("prefill").kill(signal.SIGSTOP)
    load.after_fault(t_fault, 15)
    c.proc("prefill").kill(signal.SIGCONT)
    time.sleep(3)
    results = load.stop(c.procs())
    report("stop-prefill", results, t_fault)
    all_complete("stop-prefill", results)
    replay("stop-prefill", c, results, t_fault)
    check(remote_grows(c, model, 60),
          "stop-prefill: after SIGCONT the prefill worker took no remote prefill in 60 s")


def kill_prefill(c, model):
    load = load_with_remote_prefill(c, model, "kill-prefill")
    t_fault = time.monotonic()
    c.proc("prefill").kill()
    load.after_fault(t_fault, 5)
    results = load.stop(c.procs())
    report("kill-prefill", results, t_fault)
    all_complete("kill-prefill", results)
    replay("kill-prefill", c, results, t_fault)


def decode_running(c, name):
    label = c.worker_label(name)
    return per_worker(c.base, "pdserve_worker_running_requests", "decode").get(label, 0) if label else 0


def kill_decode(c, model):
    ensure_alive(c, model, ["decode-0", "decode-1"])
    label = c.worker_label("decode-1")
    load = Load(c.base, model, max_tokens=40)
    load.warm()
    busy = wait_for(lambda: decode_running(c, "decode-1") >= 2, 30) or \
        wait_for(lambda: decode_running(c, "decode-1") >= 1, 30)
    check(busy, "kill-decode: decode-1 never ran a request")
    time.sleep(1.5)  # let them stream a few tokens
    t_fault = time.monotonic()
    c.proc("decode-1").kill()
    load.after_fault(t_fault, 5)
    results = load.stop(c.procs())
    t = report("kill-decode", results, t_fault)
    late = [(b, r) for b, r in results if r.started > t_fault + 2]
    all_complete("kill-decode (sent > 2 s after the fault)", late)
    for _, r in results:
        if r.kind == "stream_error":
            check(r.done, "kill-decode: an error frame without [DONE] after it")
        if r.kind in ("stream_error", "http_error"):
            check((r.error or {}).get("type") == "service_unavailable",
                  f"kill-decode: a lost worker should read as service_unavailable: {r.describe()}")
            check(r.started < t_fault, f"kill-decode: a request sent after the fault failed: "
                                       f"{r.describe()}")
    print(f"    failed ones: {t['stream_error']} error frames, {t['http_error']} error statuses")
    replay("kill-decode", c, results, t_fault)
    check(wait_for(lambda: label not in per_worker(c.base, "pdserve_worker_kv_total_blocks"), 10),
          f"kill-decode: the lost worker {label} is still in /metrics 10 s later")


def restart(c, model):
    old = c.remote_prefills()
    t0 = time.monotonic()
    for name in ("prefill", "decode-1"):
        c.start_worker(name, c.workers[name][0])  # (kills it first when run alone)
    c.wait_listed(["prefill", "decode-1"], 120)
    rejoin = time.monotonic() - t0
    label = c.worker_label("decode-1")
    peak = {"running": 0.0}
    load = Load(c.base, model, max_tokens=24)

    def busy():
        peak["running"] = max(peak["running"], decode_running(c, "decode-1"))
        return peak["running"] > 0 and c.remote_prefills() > old

    took = wait_for(busy, 90, step=0.1)
    results = load.stop(c.procs())
    report("restart", results, t0, "the restart")
    all_complete("restart", results)
    print(f"    rejoined {rejoin:.1f} s after start; remote prefills {old:g} -> "
          f"{c.remote_prefills():g}; peak running on the restarted {label}: {peak['running']:g}")
    check(took and c.remote_prefills() > old, "restart: no remote prefill after the restart")
    check(peak["running"] > 0, "restart: the restarted decode worker ran no request")


def first_request(c):
    """The first request once every worker has reported (seen in /metrics), before
    anything asked the frontend for its models: it must be served."""
    r = run_pool(c.base, [body(c.reported_model(), 4)], 1, DEADLINE_S)[0][1]
    check(r.kind == "ok", f"the first request, sent after the workers reported, failed: "
                          f"{r.describe()}")


SCENARIOS = {"stop-prefill": stop_prefill, "kill-prefill": kill_prefill,
             "kill-decode": kill_decode, "restart": restart}


def main():
    names = sys.argv[1:] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    require_binary()
    watchdog(240 + 150 * len(names), "test_faults")
    c = Cluster(worker_args=["--max-local-prefill-length", "32", "--remote-prefill-timeout-s", "5",
                             "--kv-cache-mb", "128"],
                frontend_args=["--request-timeout-s", "120"], env={"RAYON_NUM_THREADS": "1"})
    for name, role in (("decode-0", "decode"), ("decode-1", "decode"), ("prefill", "prefill")):
        c.start_worker(name, role)
    c.wait_listed(list(c.workers), 180)
    first_request(c)
    model = c.wait_ready(180)
    check(remote_grows(c, model, 60), "warm-up: no remote prefill within 60 s")
    for n in names:
        t0 = time.monotonic()
        print(f"--- scenario {n}", flush=True)
        SCENARIOS[n](c, model)
        print(f"--- scenario {n}: {time.monotonic() - t0:.0f} s", flush=True)
        if not c.front.alive():
            fail("the frontend died", c.procs())
    if failures:
        fail(f"{len(failures)} check(s) failed:\n  " + "\n  ".join(failures), c.procs())
    print("PASS")


if __name__ == "__main__":
    main()
