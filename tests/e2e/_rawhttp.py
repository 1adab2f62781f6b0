"""HTTP/1.1 over a raw socket, for requests that `requests` cannot or will not send
(broken framing, invalid UTF-8, floods, slow senders): build the bytes, send them,
read back whatever the server says and whether it closed the connection.

Every socket operation has a timeout; a reply records what happened instead of
raising."""

import json
import select
import socket
import time
from dataclasses import dataclass, field


@dataclass
class RawReply:
    status: int = None  # None: no status line came back
    headers: dict = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    closed: bool = False  # the server closed the connection (EOF or reset)
    reset: bool = False  # ... with a reset
    error: str = ""  # a socket error on our side
    elapsed: float = 0.0

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def short(self):
        return (f"status {self.status}, closed {self.closed}, reset {self.reset}, "
                f"body {self.body[:160]!r} {self.error}")


def request(method, path, body=b"", ctype="application/json", headers=(), version="HTTP/1.1",
            length=None):
    """The bytes of one request (Connection: close), `body` as given (dicts become JSON).
    `length` overrides Content-Length (None: the body's; False: no header)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", "Connection: close"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if length is not False:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse(buf, reply):
    """Fills reply from the bytes read so far; returns True once a whole response
    is there."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        reply.status = int(parts[1])
    except (IndexError, ValueError):
        reply.status = -1
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        reply.headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    if "content-length" in reply.headers:
        n = int(reply.headers["content-length"])
        reply.body = rest[:n]
        return len(rest) >= n
    if reply.headers.get("transfer-encoding", "").lower() == "chunked":
        body, done = _dechunk(rest)
        reply.body = body
        return done
    reply.body = rest
    return False  # until EOF


def _dechunk(data):
    out = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return out, False
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            return out, False
        if n == 0:
            return out, True
        if len(data) < n + 2:
            return out, False
        out, data = out + data[:n], data[n + 2:]


def _read(sock, reply, deadline, linger=0.5):
    """Reads until the response is complete and the connection closed, or `linger`
    seconds after a complete response, or the deadline."""
    buf = b""
    complete_at = None
    while True:
        now = time.monotonic()
        end = deadline if complete_at is None else min(deadline, complete_at + linger)
        if now >= end:
            return
        sock.settimeout(max(0.01, end - now))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError) as e:
            reply.closed, reply.reset, reply.error = True, True, type(e).__name__
            return
        if not chunk:
            reply.closed = True
            _parse(buf, reply)
            return
        buf += chunk
        if _parse(buf, reply) and complete_at is None:
            complete_at = time.monotonic()


def exchange(port, data, timeout=20.0, pieces=None, gap=0.0):
    """Sends `data` (or `pieces` with `gap` seconds between them) and reads the
    reply. The socket is closed afterwards."""
    reply = RawReply()
    t0 = time.monotonic()
    deadline = t0 + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            for i, p in enumerate(pieces if pieces is not None else [data]):
                if i and gap:
                    if _wait_readable(s, gap):
                        break  # the server answered (or closed) mid-send
                s.sendall(p)
        except (BrokenPipeError, ConnectionResetError) as e:
            reply.error = f"send: {type(e).__name__}"
        _read(s, reply, deadline)
    reply.elapsed = time.monotonic() - t0
    return reply


def _wait_readable(sock, seconds):
    r, _, _ = select.select([sock], [], [], seconds)
    return bool(r)


def exchange_flood(port, head, total, chunk=1 << 16, timeout=60.0):
    """Sends `head`, then up to `total` filler bytes as fast as the server takes
    them, stopping as soon as it answers; reads the reply."""
    reply = RawReply()
    t0 = time.monotonic()
    deadline = t0 + timeout
    filler = b" " * chunk
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head)
        s.setblocking(False)
        sent = 0
        try:
            while sent < total and time.monotonic() < deadline:
                r, w, _ = select.select([s], [s], [], 1.0)
                if r:
                    break
                if w:
                    sent += s.send(filler[:min(chunk, total - sent)])
        except (BrokenPipeError, ConnectionResetError) as e:
            reply.error = f"send after {sent} bytes: {type(e).__name__}"
        s.setblocking(True)
        _read(s, reply, deadline)
    reply.elapsed = time.monotonic() - t0
    return reply


def hold_open(port, data, seconds, step=0.25):
    """Sends `data`, then waits (sending nothing more) until the server closes the
    connection or `seconds` pass: (closed, seconds waited, bytes the server sent)."""
    t0 = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if data:
            s.sendall(data)
        while time.monotonic() - t0 < seconds:
            if _wait_readable(s, step):
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    return True, time.monotonic() - t0, got
                if not chunk:
                    return True, time.monotonic() - t0, got
                got += chunk
    return False, time.monotonic() - t0, got


def blast(port, data, timeout=5.0):
    """Connects, sends `data`, closes; returns an error string or "" (the peer may
    reset the connection: that is not an error here)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
        return ""
    except OSError as e:
        return f"{type(e).__name__}: {e}"
