"""Helpers of the end-to-end tests: start real pdserve processes on loopback, wait
for them, talk HTTP, read /metrics. Every wait is bounded; every process started
is killed at exit."""

import atexit
import os
import re
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
        self.p = subprocess.Popen([BIN] + args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        _procs.append(self)

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


def _cleanup():
    for p in _procs:
        if p.alive():
            p.p.kill()
            try:
                p.p.wait(timeout=5)
            except Exception:
                pass


atexit.register(_cleanup)


def fail(msg, procs=()):
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


def metric(base, name, labels=None):
    """Sum of the samples of `name` whose labels include `labels`."""
    text = requests.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(3))
    return total


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
