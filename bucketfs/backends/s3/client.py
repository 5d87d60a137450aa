"""The S3 request path: one signed HTTP exchange with an S3 endpoint, retried.

Owns the conversation with an S3 endpoint (AWS, SeaweedFS, MinIO, Ceph ...) below the
operations: addressing, key encoding, credentials, signing, payload hashing and retries.
`S3Client` is the base of `multipart.S3Multipart` and `backend.S3Backend`, which hold the
operations. Invariants:

- every request goes through `_request` (one attempt = sign + send + classify) inside
  `retry.retry_call`; statuses become errors only in `s3/errors.py`, transport failures only
  in `http.transport_error`;
- requests go as parts (host, encoded target, header bytes) to `s3/wire.py`, which sends
  them through our h11 connection pool (`s3/pool.py`), not through `httpx2.AsyncClient.send`
  nor httpx2's `Request`/`Response` models: no cookie jar, redirects, auth flow, URL parsing
  or header normalisation run per request (S3 needs none of them; docs/performance.md has the
  cost);
  signing is `sigv4.py`, keys, headers and dates on the wire are `values.py` and `http.py`;
- a request is signed again on every attempt (fresh date, fresh credentials from botocore's
  chain, refreshed in a worker thread when they are about to expire); no credentials at all
  means anonymous, unsigned requests;
- a key is sent URL-encoded once (`http.quote_key`), so no HTTP layer collapses `.` or `..`;
- bodies are read raw: a `Content-Encoding` of the object is never undone on the way (an object
  stored gzip-compressed is read back compressed, byte for byte);
- a streamed answer is returned open only when its status is expected, and its owner closes it;
- logs carry method, bucket, key, status and duration at DEBUG, never a credential, a signature
  or a presigned URL.

Payload signing: request bodies we build (XML) are signed with their SHA-256. Object data
(PutObject, UploadPart) is sent as `UNSIGNED-PAYLOAD` over https, where TLS already guarantees
integrity; over plain http its real SHA-256 is signed (`sign_payload=None`, the default), so a
server that checks it (AWS, MinIO, Ceph) refuses a body corrupted on the way. The hash costs
about 0.8 ms per MiB on this machine and runs in a worker thread for bodies over 1 MiB.
Measured with SeaweedFS 4.48 over http: it accepts `UNSIGNED-PAYLOAD` and does *not* check a
signed hash (a wrong one is accepted), so `sign_payload=False` is a safe speed lever there.

Checksums (`checksums=True`, the default): object data also carries `x-amz-checksum-sha256`,
which the server verifies before it stores anything (SeaweedFS 4.48 and Swift's s3api refuse a
wrong one with BadDigest; SeaweedFS and AWS keep it and return it to a HEAD in checksum mode).
It is the same SHA-256 as the signed payload hash, computed once (over http it costs nothing
more; over https one pass, about 1 ms of CPU per MiB on this machine, in a worker thread above
1 MiB). Multipart uploads are created with `x-amz-checksum-algorithm: SHA256`, each part
carries its own, a copied part's comes back in its `CopyPartResult`, and the completion lists
them (the server then keeps the composite, `<sha256 of the part digests>-<parts>`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.session
import httpcore2._async.http11 as _httpcore_http11
import httpx2
import trio
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import BotoCoreError

from bucketfs.backends.http import quote_key, quote_name, transport_error
from bucketfs.backends.retry import retry_call
from bucketfs.backends.s3 import sigv4, xmlparse
from bucketfs.backends.s3.errors import error_class
from bucketfs.backends.s3.pool import WholeBody
from bucketfs.backends.s3.values import checksum_value, encode_query
from bucketfs.backends.s3.wire import Answer, Wire
from bucketfs.errors import BackendError, BucketNotFound, ConfigError, NotFound

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: the checksum every upload carries (see "Checksums" above)
CHECKSUM_HEADER = "x-amz-checksum-sha256"
#: bodies larger than this are hashed in a worker thread
_THREAD_HASH_SIZE = 1 << 20
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_OK = frozenset({200, 204, 206})


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """Explicit credentials, bypassing botocore's chain (tests, `-o access_key=...`)."""

    access_key: str
    secret_key: str
    session_token: str | None = None


#: (`Wire.lean = False` only: the lean pool reads `pool.READ_SIZE` at a time)
#: httpcore2 reads a response 64 KiB at a time, each through h11's buffer copies: for 8 MiB
#: ranged GETs that costs about a quarter of the throughput (measured: 354 -> 459 MB/s with
#: 4 GETs in flight on SeaweedFS). It is a class attribute of httpcore2's HTTP/1.1
#: connection; only this package uses httpx2 in the daemon.
RESPONSE_READ_SIZE = 1 << 20
if getattr(_httpcore_http11.AsyncHTTP11Connection, "READ_NUM_BYTES", 0) < RESPONSE_READ_SIZE:
    _httpcore_http11.AsyncHTTP11Connection.READ_NUM_BYTES = RESPONSE_READ_SIZE

#: request bodies above this are handed to the wire whole (`pool.WholeBody`: sent from a
#: worker thread on plain TCP), else in views of this size, not copies (copying them cost
#: ~0.3 s of the trio thread per GiB uploaded)
BODY_SLICE = 1 << 20


class S3Client:
    """Signed, retried requests to an S3-compatible endpoint over HTTP(S)."""

    #: `base.Backend.copy_in_place`, learned from the store's answers (`_learn_server`)
    copy_in_place: bool | None = None

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        *,
        path_style: bool | None = None,
        max_connections: int = 32,
        retry_deadline: float = 60.0,
        credentials: S3Credentials | None = None,
        anonymous: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        sign_payload: bool | None = None,
        checksums: bool = True,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        """`credentials` bypasses botocore's chain, `anonymous` sends unsigned requests;
        `sign_payload` None signs object data over http only; `checksums` False sends no
        `x-amz-checksum-*` (a store that refuses them; see the module docstring);
        `transport` replaces the network (unit tests put an `httpx2.MockTransport` here)."""
        session: botocore.session.Session | None = None
        if region is None or (credentials is None and not anonymous):
            session = botocore.session.Session(profile=profile)
        if region is None:
            assert session is not None
            region = _session_region(session)
        self.region = region
        self._credentials: Credentials | None
        if anonymous:
            self._credentials = None
        elif credentials is not None:
            self._credentials = Credentials(
                credentials.access_key, credentials.secret_key, credentials.session_token
            )
        else:
            assert session is not None
            self._credentials = _session_credentials(session, profile)
        self.endpoint = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
        url = httpx2.URL(self.endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"S3 endpoint must be an http(s) URL, not {self.endpoint!r}")
        self._scheme = url.scheme
        self._raw_scheme = url.raw_scheme
        self._raw_host = url.raw_host
        self._port = url.port
        self._netloc = url.netloc.decode("ascii")
        # as sent and as signed: percent-encoded (an endpoint path is rare)
        self._base_path = url.raw_path.decode("ascii").split("?", 1)[0].rstrip("/")
        self._path_style = path_style if path_style is not None else endpoint is not None
        self._sign_payload = sign_payload if sign_payload is not None else url.scheme == "http"
        self.checksums = checksums
        #: upload id -> part number -> the part's checksum as sent in the completion
        self._part_checksums: dict[str, dict[int, str]] = {}
        self.retry_deadline = retry_deadline
        self.description = f"s3 {self.endpoint}"
        self._wire = Wire(
            https=url.scheme == "https",
            max_connections=max_connections,
            timeouts=httpx2.Timeout(read_timeout, connect=connect_timeout).as_dict(),
            transport=transport,
        )

    # --- plumbing ----------------------------------------------------------------------

    def _virtual_host(self, bucket: str) -> bool:
        """Virtual-hosted addressing unless path style was asked for or the name cannot be a
        host name label (dots would also break the TLS wildcard certificate)."""
        return not self._path_style and _DNS_BUCKET.match(bucket) is not None

    def _url(self, bucket: str | None, key: str | None, query: Mapping[str, str]) -> str:
        return self._join(self._url_parts(bucket, key, query))

    def _join(self, parts: tuple[str, str, str]) -> str:
        host, path, query = parts
        url = f"{self._scheme}://{host}{path}"
        return f"{url}?{query}" if query else url

    def _url_parts(
        self, bucket: str | None, key: str | None, query: Mapping[str, str]
    ) -> tuple[str, str, str]:
        """Host, encoded path and encoded query of a request."""
        netloc, path = self._netloc, self._base_path
        if bucket is not None:
            if self._virtual_host(bucket):
                netloc = f"{bucket}.{netloc}"
            else:
                path += "/" + quote_name(bucket)
        if key is not None:
            path += "/" + quote_key(key)
        elif not path:
            path = "/"
        return netloc, path, encode_query(query) if query else ""

    async def _frozen_credentials(self) -> ReadOnlyCredentials | None:
        creds = self._credentials
        if creds is None:
            return None
        refresh_needed = getattr(creds, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await trio.to_thread.run_sync(creds.get_frozen_credentials)
        return creds.get_frozen_credentials()

    def _signed_headers(
        self,
        method: str,
        parts: tuple[str, str, str],
        headers: Mapping[str, str],
        payload_hash: str,
        creds: ReadOnlyCredentials | None,
    ) -> list[tuple[bytes, bytes]]:
        host, path, query = parts
        if creds is None:
            items = {**headers, "Host": host}
        else:
            items = sigv4.sign(
                method,
                host,
                path,
                query,
                headers,
                payload_hash,
                access_key=creds.access_key or "",
                secret_key=creds.secret_key or "",
                session_token=creds.token,
                region=self.region,
            )
        items["Accept-Encoding"] = "identity"
        return [(name.encode("ascii"), value.encode("utf-8")) for name, value in items.items()]

    async def _payload_hash(self, body: bytes, *, data: bool, digest: bytes | None) -> str:
        if not body:
            return EMPTY_SHA256
        if data and not self._sign_payload:
            return UNSIGNED_PAYLOAD
        if digest is not None:
            return digest.hex()
        return (await sha256_digest(body)).hex()

    async def _data_checksum(self, data: bytes, headers: dict[str, str]) -> bytes | None:
        """Put the checksum of object data in `headers` (`CHECKSUM_HEADER`) and return its
        SHA-256, which `_request(sha256=)` reuses as the payload hash; None (nothing added)
        when `checksums` is off."""
        if not self.checksums:
            return None
        digest = await sha256_digest(data)
        headers[CHECKSUM_HEADER] = checksum_value(digest)
        return digest

    async def _request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        data: bool = False,
        ok: frozenset[int] = _OK,
        bucket_level: bool = False,
        error_in_body: bool = False,
        stream: bool = False,
        sha256: bytes | None = None,
    ) -> tuple[Answer, bytes]:
        """One S3 call with retries: the answer (open when `stream`) and its raw body.
        `sha256`: the body's digest when the caller has it already (`_data_checksum`)."""
        what = f"{method} {bucket or ''}/{key or ''}"
        parts = self._url_parts(bucket, key, query or {})
        host = self._raw_host
        if parts[0] != self._netloc:  # virtual-hosted
            host = f"{bucket}.".encode("ascii") + host
        target = (f"{parts[1]}?{parts[2]}" if parts[2] else parts[1]).encode("ascii")
        all_headers = dict(headers or {})
        if body and method in ("PUT", "POST") and not data:
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")
            all_headers["Content-MD5"] = md5
        payload_hash = await self._payload_hash(body, data=data, digest=sha256)

        async def attempt() -> tuple[Answer, bytes]:
            creds = await self._frozen_credentials()
            signed = self._signed_headers(method, parts, all_headers, payload_hash, creds)
            content: bytes | WholeBody = body
            if len(body) > BODY_SLICE:
                # h11 joins what it sends into one bytes object: a 16 MiB part would be copied
                # whole (and the allocator keeps such copies); send it in slices instead
                signed = [*signed, (b"Content-Length", str(len(body)).encode())]
                content = WholeBody(body, BODY_SLICE)
            started = time.monotonic()
            try:
                response = await self._wire.send(
                    method,
                    self._raw_scheme,
                    host,
                    self._port,
                    target,
                    signed,
                    content,
                )
                try:
                    if stream and response.status_code in ok:
                        return response, b""
                    content = await response.read()
                finally:
                    if not stream or response.status_code not in ok:
                        await response.aclose()
            except httpx2.TransportError as exc:
                log.debug("%s failed after %.3fs: %r", what, time.monotonic() - started, exc)
                raise transport_error(exc, self.endpoint, what) from exc
            log.debug(
                "%s %s -> %d in %.3fs",
                method,
                target,
                response.status_code,
                time.monotonic() - started,
            )
            if self.copy_in_place is None:
                self._learn_server(response.header(b"server"))
            if response.status_code not in ok:
                raise self._error(response.status_code, content, what, bucket_level)
            if error_in_body:
                error = xmlparse.parse_error(content)
                if error is not None:
                    cls = error_class(None, error.code)
                    raise cls(f"{what}: {error.code}: {error.message}")
            return response, content

        return await retry_call(attempt, deadline=self.retry_deadline, what=what)

    def _learn_server(self, server: str | None) -> None:
        """What the `Server` header says of how the store copies (`Backend.copy_in_place`)."""
        if server and server.startswith("SeaweedFS"):
            self.copy_in_place = True

    def _error(self, status: int, body: bytes, what: str, bucket_level: bool) -> BackendError:
        error = xmlparse.parse_error(body)
        code = error.code if error is not None else None
        cls = error_class(status, code)
        if bucket_level and cls is NotFound:
            cls = BucketNotFound
        detail = f"{code}: {error.message}" if error is not None else "no details"
        return cls(f"{what}: HTTP {status} ({detail})")

    async def _xml(
        self, method: str, bucket: str | None, key: str | None = None, **kwargs: Any
    ) -> ET.Element:
        _, content = await self._request(method, bucket, key, **kwargs)
        return xmlparse.parse(content)

    def _copy_source(self, bucket: str, key: str, version_id: str | None) -> str:
        source = f"/{quote_name(bucket)}/{quote_key(key)}"
        return f"{source}?versionId={quote_name(version_id)}" if version_id else source

    async def aclose(self) -> None:
        await self._wire.aclose()


async def sha256_digest(body: bytes) -> bytes:
    """SHA-256 of a body, in a worker thread when it is large (hashlib releases the GIL)."""
    if len(body) > _THREAD_HASH_SIZE:
        return await trio.to_thread.run_sync(lambda: hashlib.sha256(body).digest())
    return hashlib.sha256(body).digest()


def _session_region(session: botocore.session.Session) -> str:
    try:
        region = session.get_config_variable("region")
    except BotoCoreError as exc:
        raise ConfigError(f"cannot read the AWS configuration: {exc}") from exc
    return str(region) if region else DEFAULT_REGION


def _session_credentials(
    session: botocore.session.Session, profile: str | None
) -> Credentials | None:
    """botocore's chain: environment, shared files, profile, container and instance metadata."""
    try:
        return session.get_credentials()
    except BotoCoreError as exc:
        raise ConfigError(f"cannot load AWS credentials (profile {profile!r}): {exc}") from exc
