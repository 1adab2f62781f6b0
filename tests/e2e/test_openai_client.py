"""End-to-end: the official `openai` Python client against a running `pdserve serve`.

Starts `$PDSERVE_BIN serve --model default --http-port <free port> --offline`, waits
for /health (at most 120 s), then checks through the client: models.list(),
non-streaming and streaming chat (with usage), completions (with logprobs), n > 1,
and that errors surface as the right exception classes (unknown model ->
NotFoundError, max_tokens=0 -> BadRequestError).

Exit status: 0 pass, 77 skipped (no binary, or no `openai` package), 1 fail.
Run by scripts/test.sh with the venv's python from the repository root.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SKIP = 77
HEALTH_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 120


def log(msg):
    print(f"[test_openai_client] {msg}", flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def tail(path, lines=40):
    try:
        with open(path, "r", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_healthy(proc, base, log_path):
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"pdserve exited with {proc.returncode} before it was healthy:\n{tail(log_path)}")
        if http_status(f"{base}/health") == 200:
            return
        time.sleep(0.25)
    raise Failure(f"/health not 200 within {HEALTH_TIMEOUT_S} s:\n{tail(log_path)}")


def run_checks(openai, client, base):
    # --- models.list() -----------------------------------------------------------
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) >= 1, f"models.list() is empty: {models}")
    model = ids[0]
    log(f"serving {ids}; using {model!r}")

    messages = [{"role": "user", "content": "Say hello in one short sentence."}]

    # --- non-streaming chat ------------------------------------------------------
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    check(r.id.startswith("chatcmpl-"), f"chat id {r.id!r}")
    check(r.object == "chat.completion", f"object {r.object!r}")
    check(r.model == model, f"model {r.model!r}")
    check(len(r.choices) == 1, f"choices {r.choices}")
    c = r.choices[0]
    check(c.index == 0, "index")
    check(c.message.role == "assistant", f"role {c.message.role!r}")
    check(isinstance(c.message.content, str), f"content {c.message.content!r}")
    check(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
    u = r.usage
    check(u.prompt_tokens > 0, f"usage {u}")
    check(1 <= u.completion_tokens <= 12, f"usage {u}")
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage {u}")
    if c.finish_reason == "length":
        check(u.completion_tokens == 12, f"length finish with {u.completion_tokens} tokens")
    full_text = c.message.content
    log(f"chat: {full_text!r} ({u.completion_tokens} tokens, {c.finish_reason})")

    # --- streaming chat, same greedy request --------------------------------------
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, chunks, role = [], None, None, 0, None
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object!r}")
        if chunk.usage is not None:
            usage = chunk.usage
            check(chunk.choices == [], "the usage chunk has no choices")
            continue
        for ch in chunk.choices:
            if ch.delta.role:
                role = ch.delta.role
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    streamed = "".join(pieces)
    check(role == "assistant", f"stream role {role!r}")
    check(finish in ("stop", "length"), f"stream finish_reason {finish!r}")
    check(usage is not None, "include_usage gave no usage chunk")
    check(usage.completion_tokens == u.completion_tokens, f"stream usage {usage} vs {u}")
    check(streamed == full_text, f"greedy stream {streamed!r} != non-stream {full_text!r}")
    log(f"stream: {chunks} chunks, text matches")

    # --- completions ---------------------------------------------------------------
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    check(r.id.startswith("cmpl-"), f"completion id {r.id!r}")
    check(r.object == "text_completion", f"object {r.object!r}")
    c = r.choices[0]
    check(isinstance(c.text, str), f"text {c.text!r}")
    check(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
    check(1 <= r.usage.completion_tokens <= 8, f"usage {r.usage}")
    lp = c.logprobs
    check(lp is not None and len(lp.tokens) == r.usage.completion_tokens, f"logprobs {lp}")
    check(all(x <= 0.0 for x in lp.token_logprobs), f"token_logprobs {lp.token_logprobs}")
    check(all(len(t) <= 2 for t in lp.top_logprobs), f"top_logprobs {lp.top_logprobs}")
    log(f"completion: {c.text!r}")

    # --- n > 1 ---------------------------------------------------------------------
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=4, n=2, seed=7, temperature=0.8)
    check(sorted(ch.index for ch in r.choices) == [0, 1], f"n=2 choices {r.choices}")

    # --- errors as exception classes -----------------------------------------------
    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
        raise Failure("unknown model did not raise")
    except openai.NotFoundError as e:
        check(model in str(e), f"404 message should list served models: {e}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=0)
        raise Failure("max_tokens=0 did not raise")
    except openai.BadRequestError as e:
        check("max_tokens" in str(e), f"400 message should name the field: {e}")
    log("errors map to NotFoundError / BadRequestError")

    # --- the server is still healthy ------------------------------------------------
    check(http_status(f"{base}/health") == 200, "health after the checks")


def main():
    binary = os.environ.get("PDSERVE_BIN", "target/release/pdserve")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        log(f"skip: no pdserve binary at {binary}")
        return SKIP
    try:
        import openai
    except ImportError:
        log("skip: the openai package is not installed in this python")
        return SKIP

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile(prefix="pdserve-e2e-", suffix=".log", delete=False)
    cmd = [binary, "serve", "--model", "default", "--http-port", str(port), "--offline"]
    log(f"starting: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_healthy(proc, base, log_file.name)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
        run_checks(openai, client, base)
        log("pass")
        return 0
    except Failure as e:
        log(f"FAIL: {e}")
        log(f"server log tail:\n{tail(log_file.name)}")
        return 1
    except Exception as e:  # an unexpected client error is a failure, with context
        log(f"FAIL: unexpected {type(e).__name__}: {e}")
        log(f"server log tail:\n{tail(log_file.name)}")
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()
        try:
            os.unlink(log_file.name)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
