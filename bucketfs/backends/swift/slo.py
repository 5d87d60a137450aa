"""Large objects on Swift: the multipart half of `base.Backend` as Static Large Objects (SLO),
and the cleanup of the segments an SLO leaves behind.

Owns the life of an upload and the manifests; where segments live is `segments.py`.
Invariants:

- `abort_multipart` finds an upload's segments from (key, upload id) alone (`segments.py`),
  even in another process;
- `create_multipart` keeps the upload's `WriteOptions` in memory until `complete_multipart`
  (an upload is completed by the process that started it; an unknown upload id is `NotFound`);
- `upload_part_copy` is a server-side ranged copy (`PUT` with `X-Copy-From` and `Range`, the
  source checked with `If-Match`): no data passes through us;
- more parts than `segments_per_manifest` (Swift's `max_manifest_segments`, 1000 by default)
  are grouped into sub-manifests in the segments container, referenced by the top manifest
  (SLOs nest up to 10 levels);
- the old segments of a key are deleted only after its new object was written, and only when
  no version can still need them: the old object carried no version id (or `null`) and its
  container never had versioning (`X-Versions-Enabled` absent). A failed cleanup is logged,
  never raised: the write itself succeeded.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import trio

from bucketfs.backends.http import quote_key, quote_name
from bucketfs.backends.swift.account import SwiftAccount
from bucketfs.backends.swift.segments import (
    Upload,
    is_slo,
    segment_name,
    segment_prefix,
    segments_container,
)
from bucketfs.backends.swift.values import (
    md5_hex,
    put_result,
    strip_etag,
    write_headers,
)
from bucketfs.errors import (
    BackendError,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    Transient,
)
from bucketfs.types import PutResult, WriteOptions

log = logging.getLogger(__name__)

#: HEADs in flight when a bulk delete looks for SLOs among the keys
HEAD_PARALLEL = 8


# --- reading what a write replaces -------------------------------------------------------------


async def head_raw(backend: SwiftAccount, bucket: str, key: str) -> httpx2.Headers | None:
    """The headers of a HEAD, or None when the key does not exist."""
    response, _ = await backend._request("HEAD", bucket, key, ok=frozenset({200, 204, 404}))
    return None if response.status_code == 404 else response.headers


async def owns_segments(backend: SwiftAccount, bucket: str, headers: httpx2.Headers) -> bool:
    """Whether the segments of this object may go with it (see the module's invariants)."""
    if not is_slo(headers):
        return False
    if headers.get("x-object-version-id", "null") != "null":
        return False
    return await backend.get_versioning(bucket) == "Off"


async def manifest_segments(
    backend: SwiftAccount, bucket: str, key: str
) -> list[tuple[str, str, bool]]:
    """(container, object, is a sub-manifest) of every segment of the SLO at `key`."""
    _, content = await backend._request("GET", bucket, key, query={"multipart-manifest": "get"})
    try:
        entries: list[Mapping[str, Any]] = json.loads(content)
    except ValueError:
        raise Transient(f"GET {bucket}/{key}: SLO manifest is not JSON") from None
    segments = []
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str):
            continue  # an inline data segment
        container, _, obj = name.lstrip("/").partition("/")
        segments.append((container, obj, bool(entry.get("sub_slo"))))
    return segments


async def replaced(
    backend: SwiftAccount, bucket: str, key: str, *, if_match: str | None = None
) -> list[tuple[str, str, bool]] | None:
    """Before a write of `key`: check `if_match`, and return the segments that the write will
    orphan (None: nothing to clean up)."""
    if backend.leave_segments and not if_match:
        return None
    headers = await head_raw(backend, bucket, key)
    if if_match:
        etag = headers.get("etag", "").strip('"') if headers is not None else None
        if etag is None or (if_match != "*" and if_match.strip('"') != etag):
            raise PreconditionFailed(f"PUT {bucket}/{key}: the object changed (If-Match)")
    if (
        headers is None
        or backend.leave_segments
        or not await owns_segments(backend, bucket, headers)
    ):
        return None
    return await manifest_segments(backend, bucket, key)


async def drop_segments(
    backend: SwiftAccount, segments: Sequence[tuple[str, str, bool]] | None
) -> None:
    """Delete segments a write orphaned; nested manifests with their own segments."""
    if not segments:
        return
    try:
        for container, obj, sub in segments:
            if sub:
                await backend._request(
                    "DELETE",
                    container,
                    obj,
                    query={"multipart-manifest": "delete"},
                    headers={"Accept": "application/json"},
                    ok=frozenset({200, 204, 404}),
                )
        await backend.bulk_delete([(c, o) for c, o, sub in segments if not sub])
    except BackendError as exc:
        log.warning("could not delete %d old segments: %s", len(segments), exc)


async def has_segments_container(backend: SwiftAccount, bucket: str) -> bool:
    response, _ = await backend._request(
        "HEAD", segments_container(bucket), ok=frozenset({200, 204, 404})
    )
    return response.status_code != 404


async def head_many(
    backend: SwiftAccount, bucket: str, keys: Sequence[str]
) -> list[httpx2.Headers | None]:
    results: list[httpx2.Headers | None] = [None] * len(keys)
    limiter = trio.CapacityLimiter(HEAD_PARALLEL)

    async def one(i: int, key: str) -> None:
        async with limiter:
            results[i] = await head_raw(backend, bucket, key)

    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            nursery.start_soon(one, i, key)
    return results


# --- multipart as SLO --------------------------------------------------------------------------


async def ensure_segments_container(backend: SwiftAccount, bucket: str) -> str:
    container = segments_container(bucket)
    if container not in backend._segment_containers:
        await backend.head_bucket(bucket)  # no segments for a container that does not exist
        await backend._request("PUT", container, container_level=True)
        backend._segment_containers.add(container)
    return container


async def create_multipart(
    backend: SwiftAccount, bucket: str, key: str, opts: WriteOptions | None
) -> str:
    write_headers(opts)  # refuse bad metadata now, not after the upload
    await ensure_segments_container(backend, bucket)
    upload_id = secrets.token_hex(16)
    backend._uploads[upload_id] = Upload(bucket, key, opts)
    return upload_id


async def upload_part(
    backend: SwiftAccount, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
) -> str:
    name = segment_name(key, upload_id, part_number)
    headers = {"ETag": await md5_hex(data)}
    response, _ = await backend._request(
        "PUT", segments_container(bucket), name, headers=headers, body=data
    )
    return strip_etag(response.headers.get("etag", ""))


async def upload_part_copy(
    backend: SwiftAccount,
    bucket: str,
    key: str,
    upload_id: str,
    part_number: int,
    src_key: str,
    start: int,
    end: int,
    *,
    src_version_id: str | None = None,
    if_match: str | None = None,
) -> str:
    if not 0 <= start < end:
        raise InvalidRequest(f"bad copy range {start}-{end}")
    name = segment_name(key, upload_id, part_number)
    headers = {
        "X-Copy-From": f"/{quote_name(bucket)}/{quote_key(src_key)}",
        "Range": f"bytes={start}-{end - 1}",
    }
    if if_match:
        headers["If-Match"] = if_match if if_match.startswith('"') else f'"{if_match}"'
    query = {"version-id": src_version_id} if src_version_id else None
    try:
        response, _ = await backend._request(
            "PUT", segments_container(bucket), name, query=query, headers=headers
        )
    except NotFound:
        raise NotFound(f"COPY {bucket}/{src_key}: source not found") from None
    return strip_etag(response.headers.get("etag", ""))


def _manifest(entries: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps(list(entries)).encode()


async def complete_multipart(
    backend: SwiftAccount, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
) -> PutResult:
    upload = backend._uploads.get(upload_id)
    if upload is None or (upload.bucket, upload.key) != (bucket, key):
        raise NotFound(f"no upload {upload_id} of {bucket}/{key} in this process")
    numbers = [n for n, _ in parts]
    if not parts or numbers != sorted(set(numbers)):
        raise InvalidRequest("parts must be given once each, in ascending order")
    container = segments_container(bucket)
    entries: list[dict[str, Any]] = [
        {"path": f"/{container}/{segment_name(key, upload_id, n)}", "etag": etag or None}
        for n, etag in parts
    ]
    level = 0
    while len(entries) > backend.segments_per_manifest:
        level += 1
        grouped: list[dict[str, Any]] = []
        for i in range(0, len(entries), backend.segments_per_manifest):
            name = f"{segment_prefix(key, upload_id)}manifest-{level}-{i:08d}"
            await backend._request(
                "PUT",
                container,
                name,
                query={"multipart-manifest": "put"},
                body=_manifest(entries[i : i + backend.segments_per_manifest]),
            )
            grouped.append({"path": f"/{container}/{name}", "etag": None})
        entries = grouped
    old = await replaced(backend, bucket, key)
    response, _ = await backend._request(
        "PUT",
        bucket,
        key,
        query={"multipart-manifest": "put"},
        headers=write_headers(upload.opts),
        body=_manifest(entries),
    )
    backend._uploads.pop(upload_id, None)
    await drop_segments(backend, old)
    return put_result(response.headers)


async def abort_multipart(backend: SwiftAccount, bucket: str, key: str, upload_id: str) -> None:
    """Delete every segment (and sub-manifest) of the upload; nothing to do is fine."""
    backend._uploads.pop(upload_id, None)
    container = segments_container(bucket)
    prefix = segment_prefix(key, upload_id)
    names: list[str] = []
    token: str | None = None
    while True:
        try:
            page = await backend.list_page(container, prefix, delimiter=None, token=token)
        except NotFound:
            return
        names.extend(o.key for o in page.objects)
        if page.next_token is None:
            break
        token = page.next_token
    await backend.bulk_delete([(container, n) for n in names])
