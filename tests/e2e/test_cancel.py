"""Client disconnect cancels the generation in the real engine (issue 4).

Against `pdserve serve` (default model): a streaming completion that would run for
a long time (ignore_eos, 4,000 tokens) is read until a few tokens arrived, then the
connection is closed. The cancelled-requests counter must grow by one and every KV
block must be free again shortly after (the engine aborted the sequence and freed
its blocks; nothing left in flight). The same for a non-streaming request whose
client gives up. Bounded: every wait has a deadline; the server is killed at exit.
"""

import json
import socket
import time

from _pd import fail, metric, require_binary, serve, wait_idle, watchdog

require_binary()
watchdog(600, "test_cancel")

proc, base, model = serve("serve-cancel")
port = int(base.rsplit(":", 1)[1])
CANCELLED = "pdserve_requests_cancelled_total"


def open_request(stream, max_tokens=4000):
    body = json.dumps({"model": model, "prompt": "Count slowly: one, two, three,",
                       "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": stream}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def wait_blocks_used(pred, what, timeout=30):
    deadline = time.time() + timeout
    used = None
    while time.time() < deadline:
        used = metric(base, "pdserve_worker_kv_used_blocks")
        if pred(used):
            return used
        time.sleep(0.1)
    fail(f"{what}: KV blocks used stayed at {used}", [proc])


def check(stream):
    kind = "streaming" if stream else "non-streaming"
    before = metric(base, CANCELLED)
    s = open_request(stream)
    if stream:
        got = b""
        while got.count(b"data: ") < 4:
            chunk = s.recv(65536)
            if not chunk:
                fail(f"{kind}: stream ended before 4 frames: {got[:300]!r}", [proc])
            got += chunk
    wait_blocks_used(lambda u: u > 0, f"{kind}: the request never held KV blocks")
    s.close()
    t0 = time.time()
    deadline = t0 + 10
    while metric(base, CANCELLED) < before + 1:
        if time.time() > deadline:
            fail(f"{kind}: {CANCELLED} did not grow within 10 s of the disconnect", [proc])
        time.sleep(0.05)
    noticed = time.time() - t0
    wait_idle(base, 30, [proc])
    freed = time.time() - t0
    print(f"{kind}: cancel counted {noticed * 1000:.0f} ms after the disconnect; "
          f"every KV block free and nothing in flight {freed:.2f} s after it "
          "(workers report their load periodically)")


check(stream=True)
check(stream=False)
if not proc.alive():
    fail("server died", [proc])
print("PASS")
