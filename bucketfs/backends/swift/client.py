"""The Swift request path: authenticated, retried HTTP requests to a Swift proxy.

Owns the HTTP client, the authentication (through `auth.py`) and its renewal, the account's
Temp-URL key, addressing, and the one mapping of a Swift status to an error class
(`error_class`). `SwiftClient` is the base of `account.SwiftAccount` and `backend.SwiftBackend`,
which hold the operations. Invariants:

- every request goes through `_request` (one attempt = token + send + classify) inside
  `retry.retry_call`; statuses become errors only in `error_class`, transport failures in
  `http.transport_error`;
- a 401 makes one new authentication and one immediate new attempt (a token expired or was
  revoked); a second 401 is `AccessDenied`; a token whose expiry time passed is renewed before
  it is used; concurrent requests share one authentication (`_auth_lock`);
- a key is sent URL-encoded once (`http.quote_key`); bodies are read raw;
- logs carry method, container, key, status and duration at DEBUG, never a token, a key of the
  account or a TempURL signature.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2
import trio

from bucketfs.backends.http import quote_key, quote_name, transport_error
from bucketfs.backends.retry import retry_call
from bucketfs.backends.swift.auth import Authenticator, AuthResult
from bucketfs.backends.swift.segments import MAX_MANIFEST_SEGMENTS, Upload
from bucketfs.backends.swift.values import query_string
from bucketfs.errors import (
    AccessDenied,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    Transient,
)

log = logging.getLogger(__name__)

#: paths per bulk-delete request (Swift's default `max_deletes_per_request` is 10,000)
DELETE_BATCH = 1000
#: Swift's default `container_listing_limit`
MAX_LISTING = 10_000
#: renew a token this many seconds before the expiry the auth service announced
_RENEW_EARLY = 60.0

#: every status `error_class` maps on purpose; all others fall back by their hundreds
HANDLED_STATUSES = frozenset(
    {400, 401, 403, 404, 405, 408, 409, 411, 412, 413, 416, 422, 429, 498, 499}
    | {500, 501, 502, 503, 504, 507}
)


def error_class(status: int, *, container_level: bool = False) -> type[BackendError]:
    """The one mapping of a Swift status to an error class. `container_level`: the request
    addressed a container, so 404 is `BucketNotFound` and 409 (DELETE) `BucketNotEmpty`."""
    if status in (401, 403):
        return AccessDenied
    if status == 404:
        return BucketNotFound if container_level else NotFound
    if status == 412:
        return PreconditionFailed
    if status == 409:
        # a container that still holds objects; on an object, a write racing another (retry)
        return BucketNotEmpty if container_level else Transient
    # 408 request timeout, 422 body did not match its ETag, 429/498 rate limited,
    # 499 the proxy saw the client go away, 5xx (507: the only disk is full or unmounted)
    if status in (408, 422, 429, 498, 499) or (status >= 500 and status != 501):
        return Transient
    # 3xx, 400 bad name/metadata, 405, 411, 413 too large, 416, other 4xx, 501
    return InvalidRequest


class SwiftClient:
    """Authenticated, retried requests to one Swift account."""

    def __init__(
        self,
        auth: Authenticator,
        *,
        max_connections: int = 32,
        retry_deadline: float = 60.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        create_tempurl_key: bool = False,
        leave_segments: bool = False,
        segments_per_manifest: int = MAX_MANIFEST_SEGMENTS,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        """`create_tempurl_key`: set a random Temp-URL key on the account when it has none
        (needs an account admin; see `presign`); `leave_segments`: never look for (nor delete)
        the segments of an SLO that a PUT or COPY replaces (saves one HEAD per write);
        `segments_per_manifest`: the cluster's `max_manifest_segments` (bigger uploads nest
        manifests); `transport` replaces the network (unit tests)."""
        self._auth = auth
        self.retry_deadline = retry_deadline
        self.create_tempurl_key = create_tempurl_key
        self.leave_segments = leave_segments
        self.segments_per_manifest = segments_per_manifest
        self.description = f"swift {auth.auth_url}"
        self._client = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
            headers={"Accept-Encoding": "identity"},
            follow_redirects=False,
            transport=transport,
        )
        self._session: AuthResult | None = None
        self._auth_lock = trio.Lock()
        self._tempurl_key: str | None = None
        #: uploads started here and not yet completed or aborted, by upload id
        self._uploads: dict[str, Upload] = {}
        #: segments containers known to exist
        self._segment_containers: set[str] = set()

    # --- authentication ----------------------------------------------------------------

    async def _current_session(self) -> AuthResult:
        session = self._session
        if session is not None and not _expiring(session):
            return session
        async with self._auth_lock:
            session = self._session
            if session is None or _expiring(session):
                session = await self._authenticate()
            return session

    async def _renew(self, stale: AuthResult) -> None:
        """Forget `stale` after a 401, unless another task already renewed it."""
        async with self._auth_lock:
            if self._session is stale:
                self._session = None

    async def _authenticate(self) -> AuthResult:
        started = time.monotonic()
        try:
            session = await self._auth.authenticate(self._client)
        except httpx2.TransportError as exc:
            raise transport_error(exc, self._auth.auth_url, "authentication") from exc
        log.debug("authenticated at %s in %.3fs", self._auth.auth_url, time.monotonic() - started)
        self._session = session
        await self._load_tempurl_key(session)
        return session

    async def _load_tempurl_key(self, session: AuthResult) -> None:
        """Remember the account's Temp-URL key; set a new one if allowed and there is none.
        Best effort: a user without account access simply gets no presigned URLs."""
        headers = {"X-Auth-Token": session.token}
        try:
            response = await self._client.head(session.storage_url, headers=headers)
            if response.status_code >= 300:
                log.debug("HEAD account -> %d: no Temp-URL key", response.status_code)
                return
            key = response.headers.get("x-account-meta-temp-url-key") or response.headers.get(
                "x-account-meta-temp-url-key-2"
            )
            if not key and self.create_tempurl_key:
                key = secrets.token_urlsafe(32)
                response = await self._client.post(
                    session.storage_url,
                    headers={**headers, "X-Account-Meta-Temp-URL-Key": key},
                )
                if response.status_code >= 300:
                    log.warning(
                        "could not set a Temp-URL key on the account (HTTP %d)",
                        response.status_code,
                    )
                    return
                log.info("set a new Temp-URL key on the Swift account (create_tempurl_key)")
            self._tempurl_key = key or None
        except httpx2.TransportError as exc:
            log.debug("HEAD account failed: %r", exc)

    # --- plumbing ----------------------------------------------------------------------

    def _url(
        self,
        storage_url: str,
        container: str | None,
        key: str | None,
        query: Mapping[str, str | None],
    ) -> str:
        url = storage_url.rstrip("/")
        if container is not None:
            url += "/" + quote_name(container)
        if key is not None:
            url += "/" + quote_key(key)
        return f"{url}?{query_string(query)}" if query else url

    async def _request(
        self,
        method: str,
        container: str | None,
        key: str | None = None,
        *,
        query: Mapping[str, str | None] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        ok: frozenset[int] = frozenset({200, 201, 202, 204, 206}),
        container_level: bool = False,
        stream: bool = False,
        check: Callable[[bytes], None] | None = None,
    ) -> tuple[httpx2.Response, bytes]:
        """One Swift call with retries: the response (open when `stream`) and its raw body.
        `check` inspects a successful body inside the attempt (errors it raises are retried
        when `Transient`)."""
        what = f"{method} {container or ''}/{key or ''}"
        encoded = [(n.encode("ascii"), v.encode("utf-8")) for n, v in (headers or {}).items()]

        async def attempt() -> tuple[httpx2.Response, bytes]:
            for renewed in (False, True):
                session = await self._current_session()
                url = self._url(session.storage_url, container, key, query or {})
                request = self._client.build_request(
                    method,
                    url,
                    headers=[*encoded, (b"X-Auth-Token", session.token.encode("ascii"))],
                    content=body,
                )
                response, content = await self._send(request, what, ok, stream)
                status = response.status_code
                if status == 401 and not renewed and self._auth.renewable:
                    log.debug("%s -> 401: authenticating again", what)
                    await self._renew(session)
                    continue
                if status not in ok:
                    cls = error_class(status, container_level=container_level)
                    detail = content[:200].decode("utf-8", "replace").strip()
                    raise cls(f"{what}: HTTP {status}" + (f" ({detail})" if detail else ""))
                if check is not None:
                    check(content)
                return response, content
            raise AssertionError("unreachable")

        return await retry_call(attempt, deadline=self.retry_deadline, what=what)

    async def _send(
        self, request: httpx2.Request, what: str, ok: frozenset[int], stream: bool
    ) -> tuple[httpx2.Response, bytes]:
        started = time.monotonic()
        try:
            response = await self._client.send(request, stream=True)
            try:
                if stream and response.status_code in ok:
                    return response, b""
                content = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                if not stream or response.status_code not in ok:
                    await response.aclose()
        except httpx2.TransportError as exc:
            log.debug("%s failed after %.3fs: %r", what, time.monotonic() - started, exc)
            raise transport_error(exc, self.description, what) from exc
        log.debug("%s -> %d in %.3fs", what, response.status_code, time.monotonic() - started)
        return response, content

    async def _json(self, container: str | None, query: Mapping[str, str | None]) -> Any:
        _, content = await self._request(
            "GET",
            container,
            query={"format": "json", **query},
            container_level=container is not None,
        )
        if not content:
            return []
        try:
            return json.loads(content)
        except ValueError as exc:
            raise Transient(f"GET {container or ''}: listing is not JSON ({exc})") from None

    async def bulk_delete(self, paths: Sequence[tuple[str, str]]) -> None:
        """Delete (container, key) pairs with the bulk middleware; missing ones are fine."""
        for start in range(0, len(paths), DELETE_BATCH):
            batch = paths[start : start + DELETE_BATCH]
            body = "\n".join(f"/{quote_name(c)}/{quote_key(k)}" for c, k in batch).encode()
            await self._request(
                "POST",
                None,
                query={"bulk-delete": None},
                headers={"Content-Type": "text/plain", "Accept": "application/json"},
                body=body,
                check=check_bulk,
            )

    async def aclose(self) -> None:
        await self._client.aclose()


def _expiring(session: AuthResult) -> bool:
    return session.expires is not None and time.time() > session.expires - _RENEW_EARLY


def check_bulk(content: bytes) -> None:
    """The verdict inside a 200 answer of bulk delete or `multipart-manifest=delete`."""
    text = content.strip()
    if not text:
        return
    try:
        result = json.loads(text)
    except ValueError:
        raise Transient(f"bulk delete: unreadable answer {text[:100]!r}") from None
    status = str(result.get("Response Status", "200"))
    errors = [e for e in result.get("Errors", []) if not str(e[1]).startswith("404")]
    if errors:
        code = int(str(errors[0][1]).split()[0])
        cls = error_class(code)
        raise cls(f"bulk delete: {len(errors)} not deleted, first {errors[0][0]}: {errors[0][1]}")
    if not status.startswith(("2", "404")):
        cls = error_class(int(status.split()[0]))
        raise cls(f"bulk delete: {status}: {result.get('Response Body', '')}")
