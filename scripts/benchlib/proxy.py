"""A counting reverse proxy: a transparent TCP relay that parses just enough HTTP to count.

Sits on loopback between a mounted filesystem and the S3 server and counts, per method, the
requests a client sent, plus the bytes on the wire in each direction (headers included).

Invariants: the byte stream is never altered (so `Expect: 100-continue`, keep-alive, chunked
bodies and aws-chunked signing all pass through untouched); the proxy never buffers a body —
bodies with a known length and the whole server-to-client direction move with `os.splice`
(kernel to kernel, no copy through Python) where the platform allows, else in 1 MiB pieces; a
parse failure stops counting for that connection (it is logged in `parse_errors`) but never
the relaying. Counters only grow; callers take `snapshot()`s and subtract.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031
_MAX_HEAD = 1 << 20


@dataclass
class Counts:
    """What went through the proxy: requests and body bytes per method, wire bytes per way."""

    requests: dict[str, int] = field(default_factory=dict)
    #: requests by what they ask: as `requests`, but a GET that lists (a query with
    #: `list-type`, `prefix` or `delimiter`) counts as "LIST", not "GET"
    kinds: dict[str, int] = field(default_factory=dict)
    body_up: dict[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    parse_errors: int = 0

    def copy(self) -> Counts:
        return Counts(
            dict(self.requests),
            dict(self.kinds),
            dict(self.body_up),
            self.bytes_up,
            self.bytes_down,
            self.connections,
            self.parse_errors,
        )

    def minus(self, before: Counts) -> Counts:
        return Counts(
            _sub(self.requests, before.requests),
            _sub(self.kinds, before.kinds),
            _sub(self.body_up, before.body_up),
            self.bytes_up - before.bytes_up,
            self.bytes_down - before.bytes_down,
            self.connections - before.connections,
            self.parse_errors - before.parse_errors,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "requests_total": sum(self.requests.values()),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": self.connections,
        }


def _sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = {k: v - b.get(k, 0) for k, v in a.items()}
    return {k: v for k, v in out.items() if v}


class RequestParser:
    """Follows the client-to-server byte stream and reports each request head it sees.

    `feed(data)` consumes bytes; `body_remaining` > 0 means the parser sits inside a body of known
    length, which the caller may skip (splice) and report with `skip(n)`.
    """

    def __init__(
        self,
        on_request: Callable[[str], None],
        on_body: Callable[[str, int], None],
        on_kind: Callable[[str], None] = lambda _kind: None,
    ) -> None:
        self._on_request = on_request
        self._on_kind = on_kind
        self._on_body = on_body
        self._buf = b""
        self._state = "head"  # head | body | chunk_size | chunk_data | chunk_crlf | trailer
        self.body_remaining = 0
        self._method = ""

    @property
    def in_fixed_body(self) -> bool:
        return self._state == "body"

    def skip(self, n: int) -> None:
        if self._state != "body" or n > self.body_remaining:
            raise ValueError("skip outside a body")
        self.body_remaining -= n
        self._on_body(self._method, n)
        if self.body_remaining == 0:
            self._state = "head"

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._state == "body":
                n = min(self.body_remaining, len(view) - pos)
                pos += n
                self.skip(n)
            elif self._state == "chunk_data":
                n = min(self.body_remaining, len(view) - pos)
                pos += n
                self.body_remaining -= n
                self._on_body(self._method, n)
                if self.body_remaining == 0:
                    self._state = "chunk_crlf"
                    self.body_remaining = 2
            elif self._state == "chunk_crlf":
                n = min(self.body_remaining, len(view) - pos)
                pos += n
                self.body_remaining -= n
                if self.body_remaining == 0:
                    self._state = "chunk_size"
            else:
                pos = self._line_state(view, pos)

    def _line_state(self, view: memoryview, pos: int) -> int:
        """States that need whole lines (head, chunk size, trailer): buffer up to the end."""
        end_marker = b"\r\n\r\n" if self._state == "head" else b"\r\n"
        start = len(self._buf)
        self._buf += bytes(view[pos : pos + _MAX_HEAD])
        idx = self._buf.find(end_marker, max(0, start - len(end_marker) + 1))
        if idx < 0:
            if len(self._buf) > _MAX_HEAD:
                raise ValueError("HTTP head too long")
            return len(view)
        used = idx + len(end_marker) - start
        text, self._buf = self._buf[:idx], b""
        if self._state == "head":
            if text.strip():
                self._head(text)
        elif self._state == "chunk_size":
            size = int(text.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                self._state = "trailer"
            else:
                self._state, self.body_remaining = "chunk_data", size
        elif self._state == "trailer" and not text:
            self._state = "head"
        return pos + used

    def _head(self, text: bytes) -> None:
        lines = text.decode("latin-1").split("\r\n")
        self._method = lines[0].split(" ", 1)[0].upper()
        self._on_request(self._method)
        self._on_kind(request_kind(self._method, lines[0]))
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            self._state = "chunk_size"
        elif length:
            self._state, self.body_remaining = "body", length


def request_kind(method: str, request_line: str) -> str:
    """ "LIST" for a GET that lists a bucket (S3's ListObjects(V2) and ListObjectVersions,
    Swift's container GET with a query), else the method."""
    target = request_line.split(" ")[1] if " " in request_line else ""
    _, _, query = target.partition("?")
    names = {part.partition("=")[0] for part in query.split("&")}
    listing = {"list-type", "prefix", "delimiter", "versions"}
    return "LIST" if method == "GET" and names & listing else method


class CountingProxy:
    """`CountingProxy(upstream_host, upstream_port).start()`; `.endpoint`; `.snapshot()`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, splice: bool = True) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._counts = Counts()
        self._lock = threading.Lock()
        self._splice = splice and hasattr(os, "splice")
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._closed = False

    @property
    def endpoint(self) -> str:
        assert self._listener is not None
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> CountingProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        self._listener = sock
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def snapshot(self) -> Counts:
        with self._lock:
            return self._counts.copy()

    # --- relaying -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._counts.connections += 1
            self._conns.update((client, upstream))
        down = threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True)
        down.start()
        try:
            self._pump_up(client, upstream)
        finally:
            down.join()
            with self._lock:
                self._conns.difference_update((client, upstream))
            client.close()
            upstream.close()

    def _add(self, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._counts.bytes_up += up
            self._counts.bytes_down += down

    def _on_request(self, method: str) -> None:
        with self._lock:
            self._counts.requests[method] = self._counts.requests.get(method, 0) + 1

    def _on_kind(self, kind: str) -> None:
        with self._lock:
            self._counts.kinds[kind] = self._counts.kinds.get(kind, 0) + 1

    def _on_body(self, method: str, n: int) -> None:
        with self._lock:
            self._counts.body_up[method] = self._counts.body_up.get(method, 0) + n

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        parser: RequestParser | None = RequestParser(self._on_request, self._on_body, self._on_kind)
        pipe = _Pipe() if self._splice else None
        try:
            while True:
                if (
                    pipe is not None
                    and parser is not None
                    and parser.in_fixed_body
                    and parser.body_remaining > CHUNK // 4
                ):
                    n = pipe.move(src, dst, min(parser.body_remaining, CHUNK))
                    if n == 0:
                        break
                    parser.skip(n)
                    self._add(up=n)
                    continue
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
                self._add(up=len(data))
                if parser is not None:
                    try:
                        parser.feed(data)
                    except ValueError:
                        parser = None
                        with self._lock:
                            self._counts.parse_errors += 1
        except OSError:
            pass
        finally:
            if pipe is not None:
                pipe.close()
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        pipe = _Pipe() if self._splice else None
        try:
            while True:
                if pipe is not None:
                    n = pipe.move(src, dst, CHUNK)
                else:
                    data = src.recv(CHUNK)
                    dst.sendall(data)
                    n = len(data)
                if n == 0:
                    break
                self._add(down=n)
        except OSError:
            pass
        finally:
            if pipe is not None:
                pipe.close()
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class _Pipe:
    """A kernel pipe used to `splice` bytes from one socket to another without copying them."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, CHUNK)

    def move(self, src: socket.socket, dst: socket.socket, limit: int) -> int:
        """Move up to `limit` bytes; 0 at end of stream."""
        n = os.splice(src.fileno(), self.w, limit)
        left = n
        while left:
            left -= os.splice(self.r, dst.fileno(), left)
        return n

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
