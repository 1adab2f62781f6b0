"""Three real processes on loopback — frontend, decode worker, prefill worker —
joined by --seed, serving the default model:

1. long prompts are prefilled remotely (pdserve_prefill_total{location="remote"});
2. SIGKILL of the prefill worker while long prompts are in flight: every request
   still completes (the decode worker prefills locally);
3. a restarted prefill worker rejoins and takes remote prefills again;
4. a node with the wrong cluster cookie is refused, and both sides log it.
"""

import concurrent.futures as cf
import os
import time

from _pd import (
    Proc, chat, fail, free_port, health_ok, long_prompt, metric, models, require_binary,
    wait_until,
)

require_binary()

cookie = "e2e-secret"
env = {"PDSERVE_CLUSTER_COOKIE": cookie}
seed_port = free_port()
http = free_port()
base = f"http://127.0.0.1:{http}"
seed = f"127.0.0.1:{seed_port}"
common = ["--model", "default", "--offline", "--max-local-prefill-length", "32",
          "--kv-cache-mb", "128"]

front = Proc("frontend", ["frontend", "--http-port", str(http), "--cluster-listen", seed,
                          "--offline"], env)
decode = Proc("decode", ["worker", "--role", "decode", "--cluster-listen", "127.0.0.1:0",
                         "--seed", seed] + common, env)


def start_prefill(name):
    # The prefill worker joins through the seed's name, as pods do through a
    # Service name: the node resolves it itself (every address it resolves to).
    return Proc(name, ["worker", "--role", "prefill", "--cluster-listen", "127.0.0.1:0",
                       "--seed", f"localhost:{seed_port}"] + common, env)


prefill = start_prefill("prefill")
procs = [front, decode, prefill]

wait_until("frontend /health 200", lambda: health_ok(base), 180, procs)
wait_until("model listed", lambda: len(models(base)) == 1, 60, procs)
model = models(base)[0]
print(f"serving {model!r}")

# Short prompt: local prefill on the decode worker.
r = chat(base, model, "Hi!", max_tokens=8)
if r.status_code != 200:
    fail(f"short chat: HTTP {r.status_code}: {r.text}", procs)
if metric(base, "pdserve_prefill_total", {"location": "local"}) < 1:
    fail("short prompt was not counted as a local prefill", procs)

# 1. Long prompt: remote prefill (wait until the prefill worker is known).
def remote_count():
    return metric(base, "pdserve_prefill_total", {"location": "remote"})

deadline = time.time() + 60
k = 0
while remote_count() < 1:
    if time.time() > deadline:
        fail("no long prompt was prefilled remotely within 60 s", procs)
    k -= 1
    r = chat(base, model, long_prompt(k), max_tokens=8)
    if r.status_code != 200:
        fail(f"long chat: HTTP {r.status_code}: {r.text}", procs)
    body = r.json()
    if not body["choices"][0]["message"]["content"]:
        fail(f"empty completion: {body}", procs)
print("remote prefill observed:", remote_count())

# 2. SIGKILL the prefill worker while long prompts are in flight.
N = 6
with cf.ThreadPoolExecutor(N) as ex:
    futs = [ex.submit(chat, base, model, long_prompt(i + 1), 12, 300) for i in range(N)]
    time.sleep(0.3)
    prefill.kill()
    results = [f.result() for f in futs]
bad = [(r.status_code, r.text[:200]) for r in results if r.status_code != 200]
if bad:
    fail(f"{len(bad)} of {N} requests failed after the prefill worker was killed: {bad}", procs)
for r in results:
    c = r.json()["choices"][0]
    if c["finish_reason"] not in ("stop", "length") or r.json()["usage"]["completion_tokens"] < 1:
        fail(f"incomplete answer after prefill death: {r.text[:300]}", procs)
print(f"all {N} requests completed after SIGKILL of the prefill worker")

# 3. A restarted prefill worker rejoins and takes work again.
before = remote_count()
prefill2 = start_prefill("prefill-restarted")
procs = [front, decode, prefill2]
deadline = time.time() + 90
k = 100
while remote_count() <= before:
    if time.time() > deadline:
        fail("the restarted prefill worker took no remote prefill within 90 s", procs)
    k += 1  # a new prompt each time: a repeated one would hit the prefix cache
    r = chat(base, model, long_prompt(k), max_tokens=4)
    if r.status_code != 200:
        fail(f"chat after restart: HTTP {r.status_code}: {r.text}", procs)
print("restarted prefill worker took work:", remote_count())

# 4. Wrong cookie: refused, logged on both sides.
intruder = Proc("intruder", ["worker", "--role", "prefill", "--cluster-listen", "127.0.0.1:0",
                             "--seed", seed] + common, {"PDSERVE_CLUSTER_COOKIE": "wrong"})
wait_until("intruder logs the refusal",
           lambda: "refused before authentication" in intruder.text(), 60, [front, intruder])
wait_until("frontend logs the refusal",
           lambda: "refused before authentication" in front.text(), 30, [front])
intruder.kill()

# Graceful shutdown: SIGTERM → exit 0.
for p in (prefill2, decode, front):
    p.kill(15)
for p in (prefill2, decode, front):
    try:
        rc = p.wait(60)
    except Exception:
        fail(f"{p.name} did not exit within 60 s of SIGTERM", [p])
    if rc != 0:
        fail(f"{p.name} exited with {rc} after SIGTERM", [p])
print("PASS")
