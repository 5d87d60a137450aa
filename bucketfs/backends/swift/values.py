"""Swift's headers and listing JSON <-> `bucketfs.types` values, and the names of things.

Owns how an object's metadata, system headers, ETag, times and version travel in Swift's
headers and JSON listings. Invariants: user metadata is `X-Object-Meta-<name>` with the name
lower-cased on the way back; an ETag is returned without quotes, and an SLO's is its
`slo_etag` in listings as in HEAD; times are POSIX seconds (listings and `X-Timestamp` carry
microseconds, so a listing and a HEAD of the same object agree); a version id of "" is None.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx2
import trio

from bucketfs.backends import http
from bucketfs.backends.http import SYSTEM_HEADER_NAMES, header_text
from bucketfs.types import ObjectInfo, PutResult, WriteOptions

#: the content type of a delete marker, in listings and in the HEAD of that version
DELETE_MARKER_TYPE = "application/x-deleted;swift_versions_deleted=1"
_SAFE = "-_.~"
_META = "x-object-meta-"


def query_string(query: Mapping[str, str | None]) -> str:
    return "&".join(
        quote(k, safe=_SAFE) if v is None else f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}"
        for k, v in query.items()
    )


def _http_time(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def listing_time(value: object) -> float:
    """Listing times are UTC without a zone: `2024-01-02T03:04:05.123456`."""
    if not isinstance(value, str):
        return 0.0
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def strip_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _content_type(value: object) -> str | None:
    """A listing's content type without Swift's own parameters (`swift_bytes=`)."""
    if not isinstance(value, str):
        return None
    parts = [p for p in value.split(";") if not p.strip().startswith("swift_bytes=")]
    return ";".join(parts)


def version_id(value: str | None) -> str | None:
    return value or None


def object_info(key: str, headers: httpx2.Headers) -> ObjectInfo:
    """What the headers of a HEAD or GET say about the object."""
    metadata: dict[str, str] = {}
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name.startswith(_META):
            metadata[name[len(_META) :]] = header_text(raw_value)
    system = {n: headers[h] for n, h in SYSTEM_HEADER_NAMES.items() if h in headers}
    timestamp = headers.get("x-timestamp")
    try:
        modified = float(timestamp) if timestamp else _http_time(headers.get("last-modified"))
    except ValueError:
        modified = _http_time(headers.get("last-modified"))
    content_type = headers.get("content-type")
    return ObjectInfo(
        key=key,
        size=int(headers.get("content-length", "0")),
        etag=strip_etag(headers.get("etag", "")),
        last_modified=modified,
        metadata=metadata,
        content_type=content_type,
        version_id=version_id(headers.get("x-object-version-id")),
        is_latest=True,
        is_delete_marker=content_type == DELETE_MARKER_TYPE,
        system=system,
        server_date=_http_time(headers["date"]) if "date" in headers else None,
    )


def listing_info(item: Mapping[str, Any]) -> ObjectInfo:
    """One object of a JSON container listing (an SLO's ETag is its `slo_etag`)."""
    content_type = _content_type(item.get("content_type"))
    return ObjectInfo(
        key=str(item["name"]),
        size=int(item.get("bytes", 0)),
        etag=strip_etag(str(item.get("slo_etag") or item.get("hash") or "")),
        last_modified=listing_time(item.get("last_modified")),
        content_type=content_type,
        version_id=version_id(item.get("version_id")),
        is_latest=bool(item.get("is_latest", True)),
        is_delete_marker=content_type == DELETE_MARKER_TYPE,
    )


def write_headers(opts: WriteOptions | None) -> dict[str, str]:
    """Headers that carry `opts` on a PUT, a manifest PUT, a copy or a POST.

    Metadata names must be ASCII letters, digits, '-' or '.': Swift's WSGI server silently
    drops a header whose name holds '_', so such a name is refused instead of lost."""
    return http.write_headers(
        opts,
        meta_prefix="X-Object-Meta-",
        name_chars="-.",
        bad_name=lambda name: (
            f"metadata name {name!r} cannot be stored in Swift (letters, digits, '-', '.')"
        ),
    )


async def md5_hex(data: bytes) -> str:
    if len(data) > 1 << 20:
        return await trio.to_thread.run_sync(lambda: hashlib.md5(data).hexdigest())
    return hashlib.md5(data).hexdigest()


def put_result(headers: httpx2.Headers) -> PutResult:
    return PutResult(
        etag=strip_etag(headers.get("etag", "")),
        version_id=version_id(headers.get("x-object-version-id")),
    )
