"""Swift's headers and listing JSON <-> `bucketfs.types` values, and the names of things.

Owns how an object's metadata, system headers, ETag, times and version travel in Swift's
headers and JSON listings. Invariants: user metadata is `X-Object-Meta-<name>` with the name
lower-cased on the way back; an ETag is returned without quotes, and an SLO's is its
`slo_etag` in listings as in HEAD; times are POSIX seconds (listings and `X-Timestamp` carry
microseconds, so a listing and a HEAD of the same object agree); a version id of "" is None.

Expiry: `X-Delete-At` (POSIX seconds) is `system["delete_at"]` as ISO 8601 UTC both ways; a
write whose `delete_at` is already past sends none (Swift refuses a past one with 400, and the
object it named is gone: the new content is a new object). Checksums: the ETag of an object
that is not a large object (no `X-Static-Large-Object`, no `X-Object-Manifest`) is the MD5 of
its content, shown as `checksums["md5"]`.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import hashlib
import math
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx2
import trio

from bucketfs.backends import http
from bucketfs.backends.http import SYSTEM_HEADER_NAMES, header_text
from bucketfs.backends.isotime import iso_seconds
from bucketfs.types import ObjectInfo, PutResult, WriteOptions

#: the content type of a delete marker, in listings and in the HEAD of that version
DELETE_MARKER_TYPE = "application/x-deleted;swift_versions_deleted=1"
_SAFE = "-_.~"
_META = "x-object-meta-"
_MD5_HEX = re.compile(r"[0-9a-f]{32}")


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
        return iso_seconds(value)
    except ValueError:
        return 0.0


def strip_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def _content_type(value: object) -> str | None:
    """A listing's content type without Swift's own parameters (`swift_bytes=`)."""
    if not isinstance(value, str):
        return None
    if "swift_bytes=" not in value:
        return value
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
    delete_at = iso_delete_at(headers.get("x-delete-at"))
    if delete_at is not None:
        system["delete_at"] = delete_at
    content_type = headers.get("content-type")
    etag = strip_etag(headers.get("etag", ""))
    large = "x-static-large-object" in headers or "x-object-manifest" in headers
    md5 = not large and _MD5_HEX.fullmatch(etag) is not None
    return ObjectInfo(
        key=key,
        size=int(headers.get("content-length", "0")),
        etag=etag,
        last_modified=modified,
        metadata=metadata,
        content_type=content_type,
        version_id=version_id(headers.get("x-object-version-id")),
        is_latest=True,
        is_delete_marker=content_type == DELETE_MARKER_TYPE,
        system=system,
        server_date=_http_time(headers["date"]) if "date" in headers else None,
        checksums={"md5": etag} if md5 else {},
    )


def iso_delete_at(value: str | None) -> str | None:
    """`X-Delete-At` (POSIX seconds) as ISO 8601 UTC; None if absent or unreadable."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromtimestamp(int(value), datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def delete_at_header(value: str) -> str | None:
    """`system["delete_at"]` (ISO 8601) as `X-Delete-At`; None when it is not in the future
    (or unreadable: the core validated it, so that is a bug, and nothing is sent)."""
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    seconds = math.ceil(when.timestamp())
    return str(seconds) if seconds > time.time() else None


def listing_info(item: Mapping[str, Any]) -> ObjectInfo:
    """One object of a JSON container listing (an SLO's ETag is its `slo_etag`). The hot path
    of a listing, one call per entry: positional arguments, and a content type without
    `swift_bytes` (the usual one) taken as it is."""
    get = item.get
    content_type = get("content_type")
    if not isinstance(content_type, str) or "swift_bytes=" in content_type:
        content_type = _content_type(content_type)
    return ObjectInfo(
        str(item["name"]),
        int(get("bytes", 0)),
        strip_etag(str(get("slo_etag") or get("hash") or "")),
        listing_time(get("last_modified")),
        content_type=content_type,
        version_id=get("version_id") or None,
        is_latest=bool(get("is_latest", True)),
        is_delete_marker=content_type == DELETE_MARKER_TYPE,
    )


def write_headers(opts: WriteOptions | None) -> dict[str, str]:
    """Headers that carry `opts` on a PUT, a manifest PUT, a copy or a POST (a POST replaces
    them all: without `X-Delete-At` it clears the object's expiry).

    Metadata names must be ASCII letters, digits, '-' or '.': Swift's WSGI server silently
    drops a header whose name holds '_', so such a name is refused instead of lost."""
    delete_at = None
    if opts is not None and "delete_at" in opts.system:
        system = dict(opts.system)
        delete_at = delete_at_header(system.pop("delete_at"))
        opts = dataclasses.replace(opts, system=system)
    headers = http.write_headers(
        opts,
        meta_prefix="X-Object-Meta-",
        name_chars="-.",
        bad_name=lambda name: (
            f"metadata name {name!r} cannot be stored in Swift (letters, digits, '-', '.')"
        ),
    )
    if delete_at is not None:
        headers["X-Delete-At"] = delete_at
    return headers


async def md5_hex(data: bytes) -> str:
    if len(data) > 1 << 20:
        return await trio.to_thread.run_sync(lambda: hashlib.md5(data).hexdigest())
    return hashlib.md5(data).hexdigest()


def put_result(headers: httpx2.Headers) -> PutResult:
    return PutResult(
        etag=strip_etag(headers.get("etag", "")),
        version_id=version_id(headers.get("x-object-version-id")),
    )
