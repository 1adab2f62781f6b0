"""Bad input: a fixed corpus of malformed and hostile HTTP requests, then garbage on
the cluster ports. One cluster on loopback: a frontend (the HTTP gateway) and one
decode worker (`pdserve worker --role decode`, with a fixed --kv-listen port).

1. HTTP corpus (raw sockets; each case's outcome asserted precisely):
   - broken / non-object / truncated JSON, wrong types, missing fields, out-of-range
     and huge numbers, NaN/Infinity literals, invalid UTF-8, lone surrogates, deep
     nesting, unknown models, prompts over the model's context, bad token ids, wrong
     methods, unknown routes, bad content types
       -> their 4xx with OpenAI error JSON {"error": {"message", "type", "param",
          "code"}} (type, and code/param where they are defined, checked);
   - bodies over the 8 MiB limit (Content-Length and chunked) -> 413 JSON;
   - HTTP itself broken (garbage request line, bad Content-Length, conflicting
     framing, header floods, an HTTP/2 preface, a TLS hello) -> hyper's bare 4xx
     and a closed connection, or just a closed connection;
   - slowloris: headers that never end, and an idle connection, are closed by the
     header timeout (30 s); a body that stops mid-way must not hold the connection
     forever; a body that trickles in but completes is served.
   Afterwards: the server answers a normal chat completion (also with 300 idle
   connections open), and answered no request of the corpus with a 5xx.
2. Cluster ports (seeded RNG): random bytes, random length-prefixed frames,
   truncated frames, absurd length prefixes and stalled connections to the decode
   worker's cluster port and the frontend's; bad preambles and headers to the
   worker's KV data port. Afterwards both processes are alive, the frontend still
   lists the worker, and a normal request succeeds.

Usage: python tests/e2e/test_bad_input.py [--seed S] [--only NAME_SUBSTRING]
"""

import argparse
import json
import random
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from _pd import Cluster, chat, fail, free_port, health_ok, model_card, rss_kib, \
    require_binary, samples, select, server_errors, watchdog
from _rawhttp import blast, exchange, exchange_flood, hold_open, request

ANY = object()
HEADER_TIMEOUT_S = 30  # the gateway's default header_timeout
BODY_LIMIT = 8 << 20  # the gateway's default --max-body-bytes


@dataclass
class J:
    """An OpenAI error JSON response with this status (type, code and param checked
    unless ANY)."""
    status: int
    type: str = "invalid_request_error"
    code: object = ANY
    param: object = ANY


@dataclass
class Closed:
    """HTTP is broken: the server closes the connection, after a bare (non-JSON)
    response with `status`, or with no response at all when status is None."""
    status: int = None


@dataclass
class Ok:
    """Accepted: 200 with a completion."""
    status: int = 200


def judge(expect, r):
    """[] when the reply matches the expectation, else what differs."""
    if isinstance(expect, Closed):
        bad = [] if r.closed else ["connection left open"]
        if r.status != expect.status:
            bad.append(f"status {r.status}, expected {expect.status}")
        if r.body:
            bad.append("a body where hyper answers bare")
        return bad
    if r.status != expect.status:
        return [f"status {r.status}, expected {expect.status}"]
    obj = r.json()
    if not r.headers.get("content-type", "").startswith("application/json"):
        return [f"content-type {r.headers.get('content-type')!r}"]
    if isinstance(expect, Ok):
        return [] if isinstance(obj, dict) and obj.get("choices") else ["no choices in the body"]
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return ["body is not OpenAI error JSON"]
    bad = []
    if not isinstance(err.get("message"), str) or not err["message"]:
        bad.append("error.message missing or empty")
    if err.get("type") != expect.type:
        bad.append(f"error.type {err.get('type')!r}, expected {expect.type!r}")
    for key in ("param", "code"):
        if key not in err:
            bad.append(f"error.{key} missing")
        elif getattr(expect, key) is not ANY and err[key] != getattr(expect, key):
            bad.append(f"error.{key} {err[key]!r}, expected {getattr(expect, key)!r}")
    return bad


# ---- the corpus ----------------------------------------------------------------------

# A body that does not parse, or not into the request type: no field to name.
NOT_JSON = J(400, code=None, param=None)


def chat_body(served, **over):
    """A valid one-token chat request for model `served`, with `over` replacing
    fields (None removes one)."""
    b = {"model": served, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    b.update(over)
    return {k: v for k, v in b.items() if v is not None}


def raw_chat(model, fields):
    """A chat body with `fields` spliced in as raw JSON text (for literals json.dumps
    will not write: NaN, 1e400, huge integers)."""
    return (f'{{"model":{json.dumps(model)},"messages":[{{"role":"user","content":"hi"}}],'
            f'"max_tokens":1,{fields}}}').encode()


def json_cases(model, ctx):
    C, P = "/v1/chat/completions", "/v1/completions"
    ok_prompt = {"model": model, "prompt": "hi", "max_tokens": 1}
    cases = [
        ("empty body", request("POST", C, b""), NOT_JSON),
        ("truncated JSON", request("POST", C, b'{"model": "x", "messages": ['), NOT_JSON),
        ("JSON array body", request("POST", C, b"[1, 2, 3]"), NOT_JSON),
        ("JSON null body", request("POST", C, b"null"), NOT_JSON),
        ("JSON string body", request("POST", C, b'"hello"'), NOT_JSON),
        ("trailing garbage", request("POST", C, json.dumps(chat_body(model)) + " xyz"), NOT_JSON),
        ("single quotes", request("POST", C, b"{'model': 'x'}"), NOT_JSON),
        ("missing model", request("POST", C, chat_body(model, model=None)), NOT_JSON),
        ("missing messages", request("POST", C, chat_body(model, messages=None)), NOT_JSON),
        ("missing prompt", request("POST", P, {"model": model}), NOT_JSON),
        ("model is a number", request("POST", C, chat_body(model, model=7)), J(400, param="model")),
        ("messages is a string", request("POST", C, chat_body(model, messages="hi")),
         J(400, param="messages")),
        ("messages empty", request("POST", C, chat_body(model, messages=[])), J(400, param="messages")),
        ("message content is a number",
         request("POST", C, chat_body(model, messages=[{"role": "user", "content": 5}])),
         J(400, param="messages[0].content")),
        ("unknown role", request("POST", C, chat_body(model, messages=[{"role": "wizard", "content": "x"}])),
         J(400, param="messages[0].role")),
        ("image content part", request("POST", C, chat_body(model, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])),
         J(400, param="messages[0].content[0].type")),
        ("max_tokens is a string", request("POST", C, chat_body(model, max_tokens="10")),
         J(400, param="max_tokens")),
        ("max_tokens 0", request("POST", C, chat_body(model, max_tokens=0)), J(400, param="max_tokens")),
        ("max_tokens negative", request("POST", C, chat_body(model, max_tokens=-5)),
         J(400, param="max_tokens")),
        ("max_tokens fractional", request("POST", C, chat_body(model, max_tokens=3.5)),
         J(400, param="max_tokens")),
        ("max_tokens 2^70", request("POST", C, raw_chat(model, '"n":1').replace(
            b'"max_tokens":1', b'"max_tokens":1180591620717411303424')), J(400, param="max_tokens")),
        ("max_tokens 1e400", request("POST", C, raw_chat(model, '"n":1').replace(
            b'"max_tokens":1', b'"max_tokens":1e400')), NOT_JSON),
        ("max_tokens true", request("POST", C, chat_body(model, max_tokens=True)), J(400, param="max_tokens")),
        ("temperature is a string", request("POST", C, chat_body(model, temperature="hot")),
         J(400, param="temperature")),
        ("temperature negative", request("POST", C, chat_body(model, temperature=-1)),
         J(400, param="temperature")),
        ("temperature 1e39 (beyond f32)", request("POST", C, chat_body(model, temperature=1e39)),
         J(400, param="temperature")),
        ("temperature NaN literal", request("POST", C, raw_chat(model, '"temperature":NaN')), NOT_JSON),
        ("temperature Infinity literal", request("POST", C, raw_chat(model, '"temperature":Infinity')),
         NOT_JSON),
        ("temperature \"NaN\" string", request("POST", C, chat_body(model, temperature="NaN")),
         J(400, param="temperature")),
        ("top_p 1e-400 (underflows to 0)", request("POST", C, raw_chat(model, '"top_p":1e-400')),
         J(400, param="top_p")),
        ("top_p 2", request("POST", C, chat_body(model, top_p=2)), J(400, param="top_p")),
        ("n 0", request("POST", C, chat_body(model, n=0)), J(400, param="n")),
        ("n -1", request("POST", C, chat_body(model, n=-1)), J(400, param="n")),
        ("n 2^40", request("POST", C, chat_body(model, n=1 << 40)), J(400, param="n")),
        ("seed -1", request("POST", C, chat_body(model, seed=-1)), J(400, param="seed")),
        ("seed 2^63", request("POST", C, raw_chat(model, '"seed":9223372036854775808')),
         J(400, param="seed")),
        ("top_k -2", request("POST", C, chat_body(model, top_k=-2)), J(400, param="top_k")),
        ("stop is a number", request("POST", C, chat_body(model, stop=5)), J(400, param="stop")),
        ("stop has an empty string", request("POST", C, chat_body(model, stop=["a", ""])),
         J(400, param="stop")),
        ("stream is a string", request("POST", C, chat_body(model, stream="yes")), J(400, param="stream")),
        ("stream_options is a string", request("POST", C, chat_body(model, stream=True, stream_options="x")),
         J(400, param="stream_options")),
        ("stream_options is a list", request("POST", C, chat_body(model, stream=True, stream_options=[1])),
         J(400, param="stream_options[0]")),
        ("top_logprobs 1000", request("POST", C, chat_body(model, logprobs=True, top_logprobs=1000)),
         J(400, param="top_logprobs")),
        ("min_tokens > max_tokens", request("POST", C, chat_body(model, max_tokens=2, min_tokens=3)),
         J(400, param="min_tokens")),
        ("presence_penalty 5", request("POST", C, chat_body(model, presence_penalty=5)),
         J(400, param="presence_penalty")),
        ("completion logprobs -1", request("POST", P, {**ok_prompt, "logprobs": -1}), J(400, param="logprobs")),
        ("prompt is an object", request("POST", P, {**ok_prompt, "prompt": {"a": 1}}), J(400, param="prompt")),
        ("prompt empty list", request("POST", P, {**ok_prompt, "prompt": []}), J(400, param="prompt")),
        ("token id negative", request("POST", P, {**ok_prompt, "prompt": [1, -1]}), J(400, param="prompt")),
        ("token id outside the vocabulary", request("POST", P, {**ok_prompt, "prompt": [1, 99999999]}),
         J(400, param="prompt")),
        ("10,000 prompts", request("POST", P, {**ok_prompt, "prompt": ["a"] * 10000}), J(400, param="n")),
        ("deep nesting in messages", request("POST", C, b'{"model":"m","messages":' + b"[" * 100000
                                             + b"]" * 100000 + b"}"), NOT_JSON),
        ("deep nesting in an unknown field", request("POST", C, b'{"x":' + b'{"a":' * 50000 + b"1"
                                                     + b"}" * 50000 + b"}"), NOT_JSON),
        ("invalid UTF-8 in content", request("POST", C, b'{"model":"m","messages":[{"role":"user",'
                                             b'"content":"\xff\xfe\xc0\xaf"}]}'), NOT_JSON),
        ("lone surrogate escape", request("POST", C, b'{"model":"m","messages":[{"role":"user",'
                                          b'"content":"\\ud800"}]}'), NOT_JSON),
        ("unknown model (chat)", request("POST", C, chat_body("no-such-model")),
         J(404, code="model_not_found", param="model")),
        ("unknown model (completions)", request("POST", P, {**ok_prompt, "model": "gpt-4"}),
         J(404, code="model_not_found", param="model")),
        ("1 MB model name", request("POST", C, chat_body("m" * 1_000_000)),
         J(404, code="model_not_found", param="model")),
        ("prompt over the context (chat)", request("POST", C, chat_body(
            model, messages=[{"role": "user", "content": "hello " * (ctx + 100)}])),
         J(400, code="context_length_exceeded")),
        ("prompt over the context (token ids)", request("POST", P, {**ok_prompt, "prompt": [42] * (ctx + 1)}),
         J(400, code="context_length_exceeded")),
        ("NUL character in content (valid JSON)", request("POST", C, chat_body(
            model, messages=[{"role": "user", "content": "a\u0000b"}])), Ok()),
    ]
    return cases


def route_cases(model):
    C = "/v1/chat/completions"
    body = chat_body(model)
    return [
        ("GET on chat", request("GET", C, b"", ctype=None), J(405, code="method_not_allowed")),
        ("PUT on completions", request("PUT", "/v1/completions", body), J(405, code="method_not_allowed")),
        ("DELETE /v1/models", request("DELETE", "/v1/models", b"", ctype=None),
         J(405, code="method_not_allowed")),
        ("POST /health", request("POST", "/health", body), J(405, code="method_not_allowed")),
        ("invented method", request("BREW", C, body), J(405, code="method_not_allowed")),
        ("GET /", request("GET", "/", b"", ctype=None), J(404, code="unknown_url")),
        ("unknown route", request("POST", "/v2/chat/completions", body), J(404, code="unknown_url")),
        ("trailing slash", request("POST", C + "/", body), J(404, code="unknown_url")),
        ("path traversal", request("GET", "/v1/../../etc/passwd", b"", ctype=None),
         J(404, code="unknown_url")),
        ("unknown model card", request("GET", "/v1/models/nope", b"", ctype=None),
         J(404, code="model_not_found")),
        ("model card, invalid UTF-8 escape", request("GET", "/v1/models/%FF%FE", b"", ctype=None),
         J(400, param="model")),
        ("10 KB path", request("GET", "/" + "a" * 10_000, b"", ctype=None), J(404, code="unknown_url")),
        ("text/plain with a JSON body (accepted: the type is not checked)",
         request("POST", C, body, ctype="text/plain"), Ok()),
        ("no Content-Type (accepted)", request("POST", C, body, ctype=None), Ok()),
        ("form-encoded body", request("POST", C, "model=x&messages=hi",
                                      ctype="application/x-www-form-urlencoded"), NOT_JSON),
        ("multipart body", request("POST", C, "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--",
                                   ctype="multipart/form-data; boundary=b"), NOT_JSON),
    ]


def http_cases(model):
    """Requests that break HTTP itself: hyper answers, or just closes."""
    C = "/v1/chat/completions"
    body = json.dumps(chat_body(model)).encode()
    many = [f"X-Flood-{i}: {'v' * 20}" for i in range(150)]
    return [
        ("garbage request line", b"HELLO THERE\r\n\r\n", Closed(400)),
        ("binary junk", bytes(range(256)) * 4, Closed(400)),
        ("HTTP/9.9", request("GET", "/health", b"", ctype=None, version="HTTP/9.9"), Closed(400)),
        ("HTTP/2 preface on HTTP/1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Closed(None)),
        ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + bytes(160), Closed(400)),
        ("Content-Length not a number", request("POST", C, body, length="abc"), Closed(400)),
        ("negative Content-Length", request("POST", C, body, length=-1), Closed(400)),
        ("two different Content-Lengths", request("POST", C, body, headers=["Content-Length: 3"]),
         Closed(400)),
        # Transfer-Encoding wins over Content-Length (RFC 9112 6.3): the body is "hello".
        ("Content-Length and chunked", request("POST", C, b"5\r\nhello\r\n0\r\n\r\n",
                                               headers=["Transfer-Encoding: chunked"]), NOT_JSON),
        ("bad chunk size", request("POST", C, b"zz\r\nhello\r\n0\r\n\r\n", length=False,
                                   headers=["Transfer-Encoding: chunked"]), NOT_JSON),
        ("header without a colon", request("GET", "/health", b"", ctype=None, headers=["NoColonHere"]),
         Closed(400)),
        ("NUL in a header value", request("GET", "/health", b"", ctype=None, headers=["X-A: a\x00b"]),
         Closed(400)),
        ("150 headers (flood)", request("POST", C, body, headers=many), Closed(431)),
        ("a 1 MB header", request("POST", C, body, headers=["X-Big: " + "v" * 1_000_000]), Closed(431)),
        ("a 200 KB path", request("GET", "/" + "a" * 200_000, b"", ctype=None), Closed(414)),
    ]


# ---- the special cases ---------------------------------------------------------------

def over_limit_cases(port, model):
    head = request("POST", "/v1/chat/completions", b"", length=BODY_LIMIT + (1 << 20))
    chunked = request("POST", "/v1/chat/completions", b"", length=False,
                      headers=["Transfer-Encoding: chunked"])

    def chunked_flood():
        piece = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        n = BODY_LIMIT // 0x10000 + 4
        return exchange(port, None, timeout=60, pieces=[chunked] + [piece] * n)

    return [
        ("body over the limit (Content-Length)",
         lambda: exchange_flood(port, head, BODY_LIMIT + (1 << 20)), J(413, code="request_too_large")),
        ("body over the limit (chunked)", chunked_flood, J(413, code="request_too_large")),
    ]


class Slow:
    """Slowloris-style cases, run in the background while the corpus runs."""

    def __init__(self, port, model):
        self.port = port
        self.model = model
        self.results = {}
        body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode()
        self.trickle_req = request("POST", "/v1/completions", body)
        self.threads = [threading.Thread(target=f, daemon=True) for f in
                        (self.slow_headers, self.idle, self.stalled_body, self.trickled_body)]
        for t in self.threads:
            t.start()

    def slow_headers(self):
        # One header line every 2 s, never the blank line that ends them.
        pieces = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"] + \
                 [f"X-Slow-{i}: 1\r\n".encode() for i in range(40)]
        r = exchange(self.port, None, timeout=HEADER_TIMEOUT_S + 25, pieces=pieces, gap=2.0)
        self.results["slow headers"] = (r.closed and r.elapsed < HEADER_TIMEOUT_S + 10,
                                        f"closed {r.closed} after {r.elapsed:.1f} s ({r.short()})")

    def idle(self):
        closed, waited, _ = hold_open(self.port, b"", HEADER_TIMEOUT_S + 15)
        self.results["idle connection"] = (closed, f"closed {closed} after {waited:.1f} s")

    def stalled_body(self):
        # Content-Length 100, 10 bytes sent, then nothing: the connection (and its
        # handler task) must not be held forever.
        head = request("POST", "/v1/chat/completions", b'{"model":"', length=100)
        closed, waited, got = hold_open(self.port, head, HEADER_TIMEOUT_S + 30)
        self.results["stalled body"] = (closed, f"closed {closed} after {waited:.1f} s; "
                                                f"got {got[:80]!r}")

    def trickled_body(self):
        head, _, body = self.trickle_req.partition(b"\r\n\r\n")
        pieces = [head + b"\r\n\r\n"] + [body[i:i + 4] for i in range(0, len(body), 4)]
        r = exchange(self.port, None, timeout=90, pieces=pieces, gap=1.0)
        self.results["body trickled over ~15 s"] = (r.status == 200 and bool(r.json()),
                                                     r.short())

    def join(self):
        for t in self.threads:
            t.join(HEADER_TIMEOUT_S + 60)
        return self.results


# ---- cluster ports -------------------------------------------------------------------

def frame(payload):
    return struct.pack(">Q", len(payload)) + payload


def cluster_garbage(rng):
    """Byte strings for a ractor_cluster port (u64 big-endian length + protobuf)."""
    out = [rng.randbytes(rng.randint(1, 8192)) for _ in range(30)]
    out += [frame(rng.randbytes(rng.randint(1, 4096))) for _ in range(15)]
    out += [struct.pack(">Q", n) + rng.randbytes(64)
            for n in (1 << 63, (1 << 64) - 1, (16 << 20) + 1, 1 << 30, 1000)]
    out += [struct.pack(">Q", 1 << 20) + rng.randbytes(100), b"\x00" * 7, b"\x00" * 8]
    return out


def kv_garbage(rng):
    """Byte strings for the TCP KV data port (b"PDKV", u16 version, u32 header length)."""
    pre = lambda v, n: b"PDKV" + struct.pack("<HI", v, n)  # noqa: E731
    out = [rng.randbytes(rng.randint(1, 4096)) for _ in range(15)]
    out += [pre(2, 10) + bytes(10), pre(1, 0xFFFFFFFF), pre(1, 1 << 20) + rng.randbytes(100),
            pre(1, 64) + rng.randbytes(64), pre(1, 8) + bytes(8), b"PDKV", b"PDKV\x01"]
    out += [pre(1, 200) + rng.randbytes(200) for _ in range(10)]
    return out


def fuzz_port(port, blobs, what):
    errors = [e for e in (blast(port, b) for b in blobs) if e]
    # Connection refusals would mean the listener died.
    return [f"{what}: {e}" for e in errors]


def stalled(port, blobs):
    """Opens one connection per blob, sends it (if any), and keeps them all open."""
    socks = []
    for b in blobs:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if b:
            s.sendall(b)
        socks.append(s)
    return socks


# ---- main ----------------------------------------------------------------------------

def run_cases(cases, only):
    failures = []
    for name, data, expect in cases:
        if only and only not in name:
            continue
        r = data() if callable(data) else exchange(HTTP_PORT, data)
        bad = judge(expect, r)
        mark = "ok " if not bad else "BAD"
        print(f"  {mark} {name}: {r.status} {'closed' if r.closed else 'open'} "
              f"{r.body[:90]!r}" + (f"  <- {'; '.join(bad)}" if bad else ""), flush=True)
        if bad:
            failures.append(f"{name}: {'; '.join(bad)}")
    return failures


def check_serving(c, model, what):
    r = chat(c.base, model, "Say hello.", max_tokens=4, timeout=120)
    ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return [] if ok else [f"{what}: a normal chat completion got HTTP {r.status_code}: {r.text[:200]}"]


def fuzz_cluster(c, model, rng):
    decode = c.proc("decode")
    label = c.worker_label("decode")
    rss0 = rss_kib(decode.pid)
    worker_port, kv_port = c.workers["decode"][1], KV_PORT
    front_port = int(c.seed.rsplit(":", 1)[1])
    holds = stalled(worker_port, [struct.pack(">Q", 4096) + b"x" * 10, b"\x00\x00"]) + \
        stalled(kv_port, [b"PDKV\x01\x00", b"PD"])
    failures = fuzz_port(worker_port, cluster_garbage(rng), "decode cluster port")
    failures += fuzz_port(front_port, cluster_garbage(rng)[:20], "frontend cluster port")
    failures += fuzz_port(kv_port, kv_garbage(rng), "decode KV port")
    failures += check_serving(c, model, "with stalled connections open")
    for s in holds:
        s.close()
    time.sleep(1.0)
    for p in (c.front, decode):
        if not p.alive():
            failures.append(f"{p.name} died (exit {p.p.returncode})")
    if c.worker_label("decode") != label:
        failures.append(f"the frontend no longer lists the decode worker {label}")
    failures += check_serving(c, model, "after the cluster-port garbage")
    rss1 = rss_kib(decode.pid) or 0
    print(f"  decode worker RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB", flush=True)
    if rss0 and rss1 > rss0 + 256 * 1024:
        failures.append(f"decode worker RSS grew by {(rss1 - rss0) / 1024:.0f} MiB")
    return failures


def main():
    global HTTP_PORT, KV_PORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", default="", help="run only the HTTP cases whose name has this")
    args = ap.parse_args()
    require_binary()
    watchdog(600, "test_bad_input")
    KV_PORT = free_port()
    c = Cluster(worker_args=["--kv-cache-mb", "64"])
    c.start_worker("decode", "decode", extra=["--kv-listen", f"127.0.0.1:{KV_PORT}"])
    model = c.wait_ready(180)
    HTTP_PORT = c.http
    ctx = model_card(c.base)["max_model_len"]
    errors_before = server_errors(samples(c.base))  # (503s from /health while starting)
    t0 = time.monotonic()
    slow = None if args.only else Slow(HTTP_PORT, model)
    cases = json_cases(model, ctx) + route_cases(model) + http_cases(model) + \
        over_limit_cases(HTTP_PORT, model)
    print(f"HTTP corpus: {len(cases)} requests (+4 slow ones in the background)", flush=True)
    failures = run_cases(cases, args.only)
    if slow:
        for name, (ok, detail) in slow.join().items():
            print(f"  {'ok ' if ok else 'BAD'} {name}: {detail}", flush=True)
            if not ok:
                failures.append(f"{name}: {detail}")
    print(f"HTTP corpus done in {time.monotonic() - t0:.1f} s", flush=True)
    if not health_ok(c.base):
        failures.append("/health is not 200 after the corpus")
    failures += check_serving(c, model, "after the HTTP corpus")
    idle = stalled(HTTP_PORT, [b""] * 300)
    failures += check_serving(c, model, "with 300 idle connections open")
    for s in idle:
        s.close()
    smp = samples(c.base)
    if server_errors(smp) != errors_before:
        five = [f"{ls} {v:g}" for ls, v in select(smp, "pdserve_http_requests_total")
                if ls.get("status", "").startswith("5")]
        failures.append(f"the gateway answered 5xx to requests of the corpus: {five}")
    if not args.only:
        print("cluster ports: garbage to the decode worker's cluster and KV ports", flush=True)
        failures += fuzz_cluster(c, model, random.Random(args.seed))
    if failures:
        fail(f"{len(failures)} case(s) failed:\n  " + "\n  ".join(failures), c.procs())
    print("PASS")


HTTP_PORT = KV_PORT = None

if __name__ == "__main__":
    sys.exit(main())
