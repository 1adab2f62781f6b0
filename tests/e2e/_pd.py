"""Helpers of the end-to-end tests: start real pdserve processes on loopback (one
`serve`, or a frontend + workers cluster), wait for them, talk HTTP, read /metrics.
Every wait is bounded; every process started is killed at exit (normal exit,
SIGTERM/SIGINT, or the test's own watchdog); the processes' logs (LOG_DIR) are
removed after a pass and kept after a failure. The OpenAI client side (requests,
streams, completeness checks) is in _oai.py."""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

BIN = os.environ.get("PDSERVE_BIN", "target/release/pdserve")
LOG_DIR = tempfile.mkdtemp(prefix="pdserve-e2e-")
_procs = []


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def require_binary():
    if not os.path.exists(BIN):
        skip(f"no pdserve binary at {BIN}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name, args, env=None):
        self.name = name
        self.args = args
        self.log_path = os.path.join(LOG_DIR, f"{name}.log")
        self.log = open(self.log_path, "ab")
        e = dict(os.environ)
        e.setdefault("RUST_LOG", "warn,pdserve=info,pdserve_actors=info,pdserve_cluster=info")
        if env:
            e.update(env)
        self.p = subprocess.Popen([BIN] + args, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=e)
        _procs.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def kill(self, sig=signal.SIGKILL):
        if self.alive():
            self.p.send_signal(sig)

    def wait(self, timeout):
        return self.p.wait(timeout=timeout)

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def tail(self, n=40):
        return "\n".join(self.text().splitlines()[-n:])


_keep_logs = []  # non-empty once something failed: LOG_DIR stays for a look


def _excepthook(kind, value, tb):
    _keep_logs.append(kind.__name__)
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _excepthook


def _remove_logs():
    if not _keep_logs:
        shutil.rmtree(LOG_DIR, ignore_errors=True)


def _cleanup():
    for p in _procs:
        if p.alive():
            # A SIGSTOPped process must be continued to die promptly on some kernels.
            p.p.send_signal(signal.SIGCONT)
            p.p.kill()
            try:
                p.p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_remove_logs)  # runs after _cleanup (atexit is last in, first out)
atexit.register(_cleanup)


def _die_on_signal(signum, _frame):
    _cleanup()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _die_on_signal)
signal.signal(signal.SIGINT, _die_on_signal)


def watchdog(seconds, what="the test"):
    """Ends the process with exit 1 (children killed, logs shown) when `what` runs
    past `seconds`: a backstop for the per-request deadlines, so a hang can never
    stall the suite."""

    def on_alarm(_signum, _frame):
        _keep_logs.append(what)
        print(f"FAIL: {what} ran past its {seconds} s budget (logs in {LOG_DIR})", flush=True)
        for p in _procs:
            print(f"--- log of {p.name} ({p.log_path}):\n{p.tail(20)}", flush=True)
        _cleanup()
        os._exit(1)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))


def fail(msg, procs=()):
    _keep_logs.append(msg)
    print(f"FAIL: {msg}")
    for p in procs:
        print(f"--- log of {p.name} ({p.log_path}):\n{p.tail()}")
    sys.exit(1)


def wait_until(what, pred, timeout, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if not p.alive():
                fail(f"{p.name} exited with {p.p.returncode} while waiting for {what}", procs)
        try:
            if pred():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    fail(f"timed out after {timeout}s waiting for {what}", procs)


def health_ok(base):
    return requests.get(f"{base}/health", timeout=2).status_code == 200


def models(base):
    return [m["id"] for m in requests.get(f"{base}/v1/models", timeout=5).json()["data"]]


def model_card(base):
    return requests.get(f"{base}/v1/models", timeout=5).json()["data"][0]


# ---- /metrics ------------------------------------------------------------------------

def samples(base):
    """Every sample of /metrics as (name, {label: value}, value)."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def select(smp, name, labels=None):
    """The samples of `name` whose labels include `labels`: [(labels, value)]."""
    want = labels or {}
    return [(ls, v) for n, ls, v in smp
            if n == name and all(ls.get(k) == x for k, x in want.items())]


def metric(base, name, labels=None):
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for _, v in select(samples(base), name, labels))


def per_worker(base, name, role=None):
    """{worker label: value} of a worker gauge (pdserve_worker_*)."""
    want = {"role": role} if role else None
    return {ls["worker"]: v for ls, v in select(samples(base), name, want)}


def server_errors(smp):
    """HTTP responses with a 5xx status, summed over endpoints."""
    return sum(v for ls, v in select(smp, "pdserve_http_requests_total")
               if ls.get("status", "").startswith("5"))


IDLE_GAUGES = (
    "pdserve_requests_inflight",
    "pdserve_worker_kv_used_blocks",
    "pdserve_worker_running_requests",
    "pdserve_worker_queue_depth_requests",
    "pdserve_worker_prefill_queue_requests",
)


def busy_gauges(base):
    """The gauges of IDLE_GAUGES that are not 0 now: {series: value}."""
    smp = samples(base)
    out = {}
    for name in IDLE_GAUGES:
        for ls, v in select(smp, name):
            if v != 0:
                out[f"{name}{ls or ''}"] = v
    return out


def wait_idle(base, timeout, procs=()):
    """Waits until every KV block is free and nothing is in flight or queued; the
    workers report their load periodically, so this may take a moment. Fails with
    what stayed busy."""
    if not select(samples(base), "pdserve_worker_kv_total_blocks"):
        fail("no worker gauges in /metrics: nothing to check for idleness", procs)
    deadline = time.time() + timeout
    busy = None
    while time.time() < deadline:
        busy = busy_gauges(base)
        if not busy:
            return
        time.sleep(0.25)
    fail(f"still busy {timeout} s after the load ended: {busy}", procs)


# ---- processes -----------------------------------------------------------------------

def rss_kib(pid):
    """Resident set size of a process (VmRSS, KiB), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def serve(name="serve", extra=(), env=None, timeout=180):
    """Starts `pdserve serve` on the default model (a free port) and waits until it
    serves: returns (proc, base URL, model name)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    p = Proc(name, ["serve", "--model", "default", "--offline", "--http-port", str(port)]
             + list(extra), env)
    wait_until("serve /health 200", lambda: health_ok(base), timeout, [p])
    return p, base, models(base)[0]


class Cluster:
    """A frontend and workers as separate processes on loopback, joined by --seed.

    Workers get fixed cluster ports, so a worker's metrics label
    (`<node>-127.0.0.1:<port>-<suffix>/<role>/0`) tells which process it is, and a
    restarted worker comes back on the address it had."""

    def __init__(self, worker_args=(), frontend_args=(), cookie="e2e-secret", env=None):
        self.env = {"PDSERVE_CLUSTER_COOKIE": cookie, **(env or {})}
        self.seed = f"127.0.0.1:{free_port()}"
        self.http = free_port()
        self.base = f"http://127.0.0.1:{self.http}"
        self.worker_args = ["--model", "default", "--offline"] + list(worker_args)
        self.front = Proc("frontend", ["frontend", "--http-port", str(self.http),
                                       "--cluster-listen", self.seed, "--offline"]
                          + list(frontend_args), self.env)
        self.workers = {}  # name -> (role, port, Proc)
        self._runs = {}  # name -> times started
        self._stale = {}  # name -> labels of its earlier runs (never its label again)

    def start_worker(self, name, role, port=None, extra=(), env=None, seed=None):
        """Starts (or restarts, on its old port) worker `name`; returns its Proc.
        `seed` overrides the seed address (e.g. by name: `localhost:PORT`)."""
        if port is None:
            port = self.workers[name][1] if name in self.workers else free_port()
        if name in self.workers:
            old = self.workers[name][2]
            old.kill()
            old.wait(30)
            self._stale.setdefault(name, set()).update(self._labels(port, role))
        runs = self._runs.get(name, 0) + 1
        self._runs[name] = runs
        log_name = name if runs == 1 else f"{name}.run{runs}"
        p = Proc(log_name, ["worker", "--role", role, "--cluster-listen", f"127.0.0.1:{port}",
                            "--seed", seed or self.seed] + self.worker_args + list(extra),
                 {**self.env, **(env or {})})
        self.workers[name] = (role, port, p)
        return p

    def proc(self, name):
        return self.workers[name][2]

    def procs(self):
        """The frontend and every live worker (for log tails and liveness checks)."""
        return [self.front] + [p for _, _, p in self.workers.values() if p.alive()]

    def _labels(self, port, role):
        return [label for label in per_worker(self.base, "pdserve_worker_kv_total_blocks", role)
                if f"127.0.0.1:{port}-" in label]

    def worker_label(self, name):
        """The metrics label of worker `name`'s current run, or None when the frontend
        does not list it (not joined yet, or lost)."""
        role, port, _ = self.workers[name]
        stale = self._stale.get(name, set())
        return next((x for x in self._labels(port, role) if x not in stale), None)

    def wait_listed(self, names, timeout):
        wait_until(f"frontend lists {names}",
                   lambda: all(self.worker_label(n) for n in names), timeout, self.procs())

    def reported_model(self):
        """The model name in the workers' metrics labels (read without asking the
        frontend for its models)."""
        smp = select(samples(self.base), "pdserve_worker_kv_total_blocks", {"role": "decode"})
        return smp[0][0]["model"] if smp else None

    def wait_ready(self, timeout=180):
        """Waits for /health and every started worker in the frontend's metrics;
        returns the model name."""
        wait_until("frontend /health 200", lambda: health_ok(self.base), timeout, self.procs())
        self.wait_listed(list(self.workers), timeout)
        return models(self.base)[0]

    def remote_prefills(self):
        return metric(self.base, "pdserve_prefill_total", {"location": "remote"})

    def warm_until_remote(self, model, timeout=60, words=120):
        """Sends long prompts (unchecked, untimed) until one is prefilled remotely:
        the decode worker learns of a prefill worker a moment after the frontend
        lists both."""
        deadline, k = time.time() + timeout, 0
        while self.remote_prefills() < 1:
            if time.time() > deadline:
                fail(f"no long prompt was prefilled remotely within {timeout} s", self.procs())
            k += 1
            chat(self.base, model, long_prompt(900 + k, words=words), max_tokens=1, timeout=300)


def chat(base, model, content, max_tokens=16, timeout=120):
    r = requests.post(
        f"{base}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
        timeout=timeout,
    )
    return r


def long_prompt(i, words=120):
    base = (
        "The quick brown fox jumps over the lazy dog while the river runs past old mills "
        "and quiet farms under a grey autumn sky. "
    )
    return f"Story {i}: " + (base * (words // 20 + 1)) + " Summarize the story in one sentence."
