"""A HEAD request's bytes, and its response head parsed by llhttp (`httptools`).

Owns `request_bytes` (a request head from method, target and headers, checked as h11 checks
them) and `ResponseHead` (the status, headers and keep-alive of one response to HEAD, fed the
bytes as they come). `s3/pool.py` sends every HEAD through them instead of h11.
Why: a HEAD is the one request per file of a cold `ls -l`, `du`, `find -size` or `stat`, and
h11's pure-Python state machine, header validation and parsing took ~75 us of a HEAD's
~330 us of daemon CPU (cold `ls -lR` of 10,000 files: 34% of the daemon's CPU); llhttp, the
parser of Node.js, does the same in ~3 us (docs/maintainers/performance.md, "Session 22").
Invariants:

- parsing is llhttp's (status line, header lines, versions, keep-alive, 1xx answers): this
  module only collects what it reports; a response it rejects is `RemoteProtocolError`;
- a response to HEAD has no body whatever its headers say (RFC 9110 9.3.2): it ends with its
  head; any byte after that head is a protocol error of the server's, and the connection is
  not reused (`extra`);
- a request goes out only if its target and every header name and value are what h11 would
  send (a token name; a value without CR, LF or NUL and without surrounding whitespace):
  else `LocalProtocolError`, nothing sent;
- informational answers (1xx) before the final one are skipped, as h11 does;
- the connection is kept alive as h11 keeps it: HTTP/1.1 without `Connection: close`.
"""

from __future__ import annotations

import re

import httptools
import httpx2

Headers = list[tuple[bytes, bytes]]

#: RFC 9110 token (a field name), as h11's `_field_name_re`
_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+").fullmatch
#: a field value h11 accepts: visible characters and obs-text, single spaces and tabs inside,
#: none at either end (h11's `_field_value_re`, without its obs-fold leniency)
_VALUE = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
).fullmatch
#: a request target: visible ASCII only (h11's `request_target` is the same set)
_TARGET = re.compile(rb"[\x21-\x7e]+").fullmatch


def request_bytes(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The request head to send (HTTP/1.1, no body)."""
    if not _TARGET(target):
        raise httpx2.LocalProtocolError(f"illegal request target {target!r}")
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if not _NAME(name) or not _VALUE(value):
            raise httpx2.LocalProtocolError(f"illegal header {name!r}: {value!r}")
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


class ResponseHead:
    """The head of one response to HEAD, as llhttp reports it; `feed` until it says done."""

    __slots__ = ("_parser", "done", "extra", "headers", "keep", "status")

    def __init__(self) -> None:
        #: (name, value) pairs as received, in order (values without trailing whitespace)
        self.headers: Headers = []
        self.status = 0
        self.done = False
        #: bytes came after the head
        self.extra = False
        #: the connection may serve another request (HTTP/1.1 without `Connection: close`)
        self.keep = False
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> bool:
        """Parse `data`; True once the final head came (then `status`, `headers`, `keep`)."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise httpx2.RemoteProtocolError("unexpected protocol upgrade") from exc
        except httptools.HttpParserError as exc:
            raise httpx2.RemoteProtocolError(f"invalid response: {exc}") from exc
        return self.done

    # --- llhttp's callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:
            self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: informational, the final answer follows
            self.headers = []
            return
        self.status = status
        # as h11 for a HEAD: HTTP/1.1 without `Connection: close`, whatever the framing says
        # (no body follows); llhttp's no also counts a head without a length as read to EOF,
        # its yes an HTTP/1.0 `keep-alive`: the version is checked, the headers only on a no
        parser = self._parser
        self.keep = parser.get_http_version() == "1.1" and (
            parser.should_keep_alive()
            or not any(
                name.lower() == b"connection" and b"close" in value.lower()
                for name, value in self.headers
            )
        )
        self.done = True

    def on_body(self, body: bytes) -> None:
        self.extra = True
