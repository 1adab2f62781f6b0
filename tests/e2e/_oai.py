"""The client side of the load and fault tests: one OpenAI request (chat or
completions, streaming or not) sent with `requests`, read to its end within a
deadline, and classified; a completeness check of a successful reply; a bounded
pool of concurrent clients; latency percentiles.

A reply is one of:
  ok           HTTP 200 and a complete body (stream: every frame parsed, `[DONE]` last)
  http_error   a non-200 status with an OpenAI error body {"error": {...}}
  stream_error HTTP 200, then a `data: {"error": ...}` frame, then `[DONE]`
  broken       anything else the server did: a connection closed mid-stream, a
               stream without `[DONE]`, frames after `[DONE]`, a body that is not
               the JSON it should be
  hung         no end within the deadline (client-side timeout)
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

KINDS = ("ok", "http_error", "stream_error", "broken", "hung")


@dataclass
class Choice:
    text: str = ""
    tokens: int = 0  # logprob entries received (= sampled tokens when logprobs is on)
    finish: str = None


@dataclass
class Reply:
    kind: str = "ok"
    status: int = None
    error: dict = None  # the OpenAI error object of an http_error / stream_error
    detail: str = ""  # why broken / hung
    choices: dict = field(default_factory=dict)  # index -> Choice
    usage: dict = None
    done: bool = False
    started: float = 0.0  # time.monotonic()
    first_byte: float = None
    ended: float = None

    @property
    def latency(self):
        return (self.ended or time.monotonic()) - self.started

    def choice(self, i):
        return self.choices.setdefault(i, Choice())

    def describe(self):
        what = self.detail or (self.error or {}).get("message", "")
        return f"{self.kind} (HTTP {self.status}) {what}"[:300]


def endpoint_path(body):
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def _add_choice_piece(reply, chat, c):
    ch = reply.choice(c.get("index", 0))
    if chat:
        part = c.get("delta") or c.get("message") or {}
        ch.text += part.get("content") or ""
        lp = c.get("logprobs") or {}
        ch.tokens += len(lp.get("content") or [])
    else:
        ch.text += c.get("text") or ""
        lp = c.get("logprobs") or {}
        ch.tokens += len(lp.get("tokens") or [])
    if c.get("finish_reason"):
        ch.finish = c["finish_reason"]


def _on_frame(reply, chat, frame):
    """One SSE event; returns False when the stream is broken."""
    data = [line[5:].lstrip() for line in frame.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return True  # a comment or keep-alive
    payload = b"\n".join(data)
    if reply.done:
        reply.detail = f"frame after [DONE]: {payload[:120]!r}"
        return False
    if payload == b"[DONE]":
        reply.done = True
        return True
    try:
        obj = json.loads(payload)
    except ValueError:
        reply.detail = f"frame is not JSON: {payload[:120]!r}"
        return False
    if "error" in obj:
        reply.kind = "stream_error"
        reply.error = obj["error"]
        return True
    if reply.kind == "stream_error":
        reply.detail = "a chunk after the error frame"
        return False
    for c in obj.get("choices") or []:
        _add_choice_piece(reply, chat, c)
    if obj.get("usage"):
        reply.usage = obj["usage"]
    return True


def _read_stream(reply, resp, chat, deadline):
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        if reply.first_byte is None:
            reply.first_byte = time.monotonic()
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            if not _on_frame(reply, chat, frame):
                reply.kind = "broken"
                return
        if time.monotonic() > deadline:
            reply.kind, reply.detail = "hung", "stream still open at the deadline"
            return
    if buf.strip():
        reply.kind, reply.detail = "broken", f"unterminated frame {buf[:120]!r}"
    elif not reply.done:
        reply.kind, reply.detail = "broken", "stream ended without [DONE]"


def _read_json(reply, resp, chat):
    reply.first_byte = time.monotonic()
    try:
        obj = resp.json()
    except ValueError:
        reply.kind, reply.detail = "broken", f"body is not JSON: {resp.text[:120]!r}"
        return
    if resp.status_code != 200:
        return _on_error_body(reply, obj)
    for c in obj.get("choices") or []:
        _add_choice_piece(reply, chat, c)
    reply.usage = obj.get("usage")


def _on_error_body(reply, obj):
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err:
        reply.kind, reply.error = "http_error", err
    else:
        reply.kind, reply.detail = "broken", f"error body is not OpenAI error JSON: {obj!r:.120}"


def call(session, base, body, deadline_s):
    """Sends one request; never raises, never takes (much) longer than deadline_s."""
    reply = Reply(started=time.monotonic())
    deadline = reply.started + deadline_s
    chat = "messages" in body
    try:
        with session.post(base + endpoint_path(body), json=body, stream=True,
                          timeout=(10, deadline_s)) as resp:
            reply.status = resp.status_code
            streaming = resp.headers.get("content-type", "").startswith("text/event-stream")
            if resp.status_code == 200 and streaming:
                _read_stream(reply, resp, chat, deadline)
            elif resp.status_code == 200 and body.get("stream"):
                reply.kind, reply.detail = "broken", "stream answered without text/event-stream"
            else:
                _read_json(reply, resp, chat)
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
        if isinstance(e, requests.ConnectTimeout) or "timed out" in str(e).lower():
            reply.kind, reply.detail = "hung", f"{type(e).__name__}: {str(e)[:160]}"
        else:
            reply.kind, reply.detail = "broken", f"{type(e).__name__}: {str(e)[:160]}"
    except requests.Timeout as e:
        reply.kind, reply.detail = "hung", f"{type(e).__name__}: {str(e)[:160]}"
    except requests.RequestException as e:
        reply.kind, reply.detail = "broken", f"{type(e).__name__}: {str(e)[:160]}"
    reply.ended = time.monotonic()
    return reply


def problems(body, reply):
    """What is wrong with a reply that should be a complete success ([] = nothing).

    Every choice has a finish_reason; usage adds up; with logprobs on, usage counts
    exactly the tokens received; with ignore_eos, exactly max_tokens each."""
    if reply.kind != "ok" or reply.status != 200:
        return [reply.describe()]
    out = []
    n = body.get("n", 1) * (len(body["prompt"]) if isinstance(body.get("prompt"), list)
                            and body["prompt"] and isinstance(body["prompt"][0], str) else 1)
    max_tokens = body.get("max_tokens", 16)
    stream = body.get("stream", False)
    if stream and not reply.done:
        out.append("no [DONE]")
    if sorted(reply.choices) != list(range(n)):
        out.append(f"choices {sorted(reply.choices)}, expected {n}")
    for i, c in sorted(reply.choices.items()):
        if c.finish not in ("stop", "length"):
            out.append(f"choice {i}: finish_reason {c.finish!r}")
        if body.get("ignore_eos") and (c.finish != "length" or c.tokens != max_tokens):
            out.append(f"choice {i}: ignore_eos gave {c.tokens} tokens ({c.finish}), "
                       f"expected {max_tokens} (length)")
    want_usage = not stream or (body.get("stream_options") or {}).get("include_usage")
    u = reply.usage
    if want_usage and not u:
        out.append("no usage")
    elif u:
        got = sum(c.tokens for c in reply.choices.values())
        if u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            out.append(f"usage does not add up: {u}")
        if not 1 <= u["completion_tokens"] <= max_tokens * n:
            out.append(f"usage.completion_tokens {u['completion_tokens']} outside 1..{max_tokens * n}")
        if body.get("logprobs") not in (None, False) and u["completion_tokens"] != got:
            out.append(f"usage.completion_tokens {u['completion_tokens']} != {got} tokens received")
    return out


# ---- the load mix --------------------------------------------------------------------

WORDS = ("river mountain quiet engine paper garden silver window planet music bridge "
         "winter orange signal forest candle market doctor rabbit ocean thunder castle "
         "pencil harbor lantern meadow circuit violin desert compass").split()
SYSTEM = ("You are a careful assistant for a shipping company. Answer in plain words, "
          "keep answers short, never invent tracking numbers, and be polite. ") * 2


def text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def mixed_body(rng, model, i):
    """One request of the load mix (see test_load.py); request i's prompt is unique."""
    chat = rng.random() < 0.5
    body = {"model": model, "max_tokens": rng.randint(4, 24),
            "stream": rng.random() < 0.6}
    prompt = f"#{i} {text(rng, 2, 40)}"
    if chat:
        msgs = [{"role": "user", "content": prompt}]
        if rng.random() < 0.2:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        body["messages"] = msgs
    else:
        body["prompt"] = (SYSTEM + prompt) if rng.random() < 0.2 else prompt
    if rng.random() < 0.5:
        body["ignore_eos"] = True
        body["logprobs"] = True if chat else 0
    elif rng.random() < 0.15:
        body["stop"] = ["\n\n", "."]
    if rng.random() < 0.05:
        body["n"] = 2
    if rng.random() < 0.5:
        body["temperature"] = 0
    else:
        body.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 1 << 30))
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return body


def percentile(xs, q):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_pool(base, bodies, clients, deadline_s, on_reply=None, stop=None):
    """Sends `bodies` from `clients` threads (each with its own keep-alive session),
    in order; returns [(body, Reply)] in the order of `bodies`. `stop` (an Event)
    ends the run early: bodies not yet sent are left out."""
    results = [None] * len(bodies)
    lock = threading.Lock()
    cursor = iter(range(len(bodies)))

    def client():
        with requests.Session() as s:
            while not (stop and stop.is_set()):
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                r = call(s, base, bodies[i], deadline_s)
                results[i] = (bodies[i], r)
                if on_reply:
                    on_reply(bodies[i], r)

    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client) for _ in range(clients)]:
            f.result()
    return [x for x in results if x is not None]


def tally(results):
    """{kind: count} over [(body, Reply)]."""
    out = {k: 0 for k in KINDS}
    for _, r in results:
        out[r.kind] += 1
    return out
