"""Three real processes on loopback — frontend, decode worker, prefill worker —
joined by --seed, serving the default model:

1. long prompts are prefilled remotely (pdserve_prefill_total{location="remote"});
2. SIGKILL of the prefill worker while long prompts are in flight: every request
   still completes (the decode worker prefills locally);
3. a restarted prefill worker rejoins and takes remote prefills again;
4. a node with the wrong cluster cookie is refused, and both sides log it;
and the workers' probe endpoints (--health-listen) say ready once they serve.
"""

import concurrent.futures as cf
import time

import requests

from _pd import (Cluster, chat, fail, free_port, long_prompt, metric, require_binary, wait_until,
                 watchdog)

require_binary()
watchdog(900, "test_disagg_cluster")

cookie = "e2e-secret"
c = Cluster(worker_args=["--max-local-prefill-length", "32", "--kv-cache-mb", "128"],
            cookie=cookie)
base = c.base
front = c.front
decode_probes = f"http://127.0.0.1:{free_port()}"
decode = c.start_worker("decode", "decode",
                        extra=["--health-listen", decode_probes.removeprefix("http://")])
# The prefill worker joins through the seed's name, as pods do through a Service
# name: the node resolves it itself, on every attempt, trying each address.
seed_by_name = "localhost:" + c.seed.rsplit(":", 1)[1]
prefill = c.start_worker("prefill", "prefill", seed=seed_by_name)
procs = [front, decode, prefill]
model = c.wait_ready(180)
print(f"serving {model!r}")

# The decode worker's probes: live, and ready (it serves and has cluster peers).
if requests.get(f"{decode_probes}/live", timeout=10).status_code != 200:
    fail("decode worker /live is not 200", procs)
wait_until("decode worker /health 200",
           lambda: requests.get(f"{decode_probes}/health", timeout=10).status_code == 200, 30, procs)
h = requests.get(f"{decode_probes}/health", timeout=10).json()
if h["status"] != "ready" or h["role"] != "decode" or h["peers"] < 1:
    fail(f"decode worker /health says {h}", procs)
print("decode worker probes:", h)

# Short prompt: local prefill on the decode worker.
r = chat(base, model, "Hi!", max_tokens=8)
if r.status_code != 200:
    fail(f"short chat: HTTP {r.status_code}: {r.text}", procs)
if metric(base, "pdserve_prefill_total", {"location": "local"}) < 1:
    fail("short prompt was not counted as a local prefill", procs)

# 1. Long prompt: remote prefill (wait until the prefill worker is known).
remote_count = c.remote_prefills

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
    ch = r.json()["choices"][0]
    if ch["finish_reason"] not in ("stop", "length") or r.json()["usage"]["completion_tokens"] < 1:
        fail(f"incomplete answer after prefill death: {r.text[:300]}", procs)
print(f"all {N} requests completed after SIGKILL of the prefill worker")

# 3. A restarted prefill worker rejoins and takes work again.
before = remote_count()
prefill2 = c.start_worker("prefill", "prefill", seed=seed_by_name)
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
intruder = c.start_worker("intruder", "prefill", env={"PDSERVE_CLUSTER_COOKIE": "wrong"})
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
