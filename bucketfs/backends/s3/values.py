"""S3 values on the wire: keys and queries as sent, headers as written and as read back.

Owns `encode_query`, `write_headers` (WriteOptions -> request headers) and `object_info` (the
raw headers of a HEAD or GET -> `ObjectInfo`, with the `x-amz-checksum-*` a HEAD in checksum
mode returns, as hex) and `checksum_value` (a digest as S3 carries it, base64); keys and names
in a path are `http.quote_key` and `http.quote_name`, shared with Swift. Invariants:

- a query is sorted and fully encoded, exactly as SigV4 canonicalises it;
- answer headers are read in one pass over the raw pairs; a value is UTF-8 when it is valid
  UTF-8, else Latin-1 (never fails); a repeated header is its values joined by ", ";
- a date is read as the server wrote it: the IMF-fixdate of RFC 9110 by a fast path, any other
  form by `email.utils`; the result is the same POSIX seconds either way (a unit test
  compares them), 0.0 for a missing or unreadable date.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import email.utils
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from urllib.parse import quote

from bucketfs.backends import http
from bucketfs.backends.http import SYSTEM_HEADER_NAMES, header_text
from bucketfs.backends.s3 import xmlparse
from bucketfs.types import ObjectInfo, PutResult, WriteOptions

#: keys per DeleteObjects request (S3's limit)
DELETE_BATCH = 1000

_SYSTEM_BY_HEADER = {h.lower(): n for n, h in SYSTEM_HEADER_NAMES.items()}
META_PREFIX = "x-amz-meta-"
#: S3's additional checksums: answer header -> algorithm (`ObjectInfo.checksums`)
CHECKSUM_HEADERS = {
    f"x-amz-checksum-{algorithm}": algorithm
    for algorithm in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
}
_SAFE = "-_.~"
#: the answer headers `object_info` reads besides metadata and system headers
_INFO_HEADERS = frozenset(
    {
        "content-length",
        "etag",
        "last-modified",
        "date",
        "content-type",
        "x-amz-version-id",
        "x-amz-delete-marker",
        "x-amz-storage-class",
        *_SYSTEM_BY_HEADER,
        *CHECKSUM_HEADERS,
    }
)
_INFO_HEADERS_BYTES = frozenset(h.encode("latin-1") for h in _INFO_HEADERS)
_META_PREFIX_BYTES = META_PREFIX.encode("latin-1")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def encode_query(query: Mapping[str, str]) -> str:
    """The query string exactly as SigV4 canonicalises it: sorted, everything encoded."""
    return "&".join(
        f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in sorted(query.items())
    )


def batches(keys: Sequence[str], size: int = DELETE_BATCH) -> list[Sequence[str]]:
    """`keys` cut into consecutive slices of at most `size`."""
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def quoted_etag(etag: str) -> str:
    return etag if etag.startswith('"') or etag == "*" else f'"{etag}"'


def http_time(value: str | None) -> float:
    """An HTTP date as POSIX seconds; 0.0 if missing or unreadable."""
    if not value:
        return 0.0
    return _http_time(value)


# every answer's `Date` repeats within a second, an object's `Last-Modified` at each HEAD of it:
# 2 parses a HEAD were ~8% of its client CPU at 32 in flight (scripts/benchlib/reqbench.py)
@lru_cache(maxsize=512)
def _http_time(value: str) -> float:
    # IMF-fixdate, what every S3 server sends: "Wed, 02 Dec 2026 12:00:00 GMT"
    if len(value) == 29 and value[3:5] == ", " and value[25:] == " GMT":
        month = _MONTHS.get(value[8:11])
        digits = (value[5:7], value[12:16], value[17:19], value[20:22], value[23:25])
        if month is not None and all(d.isdigit() for d in digits):
            day, year, hour, minute, second = map(int, digits)
            if 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61:
                return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], dict[str, str]]:
    """One pass over an answer's headers: (the headers `object_info` reads, by lower-case
    name; user metadata by name without `x-amz-meta-`)."""
    found: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for raw_name, raw_value in raw:
        lower = raw_name.lower()
        if lower.startswith(_META_PREFIX_BYTES):
            name = lower[len(_META_PREFIX_BYTES) :].decode("latin-1")
            metadata[name] = header_text(raw_value)
        elif lower in _INFO_HEADERS_BYTES:
            name = lower.decode("latin-1")
            value = header_text(raw_value)
            found[name] = f"{found[name]}, {value}" if name in found else value
    return found, metadata


def object_info(key: str, raw: Iterable[tuple[bytes, bytes]]) -> ObjectInfo:
    """What the headers of a HEAD or GET say about the object."""
    found, metadata = read_headers(raw)
    get = found.get
    return ObjectInfo(
        key=key,
        size=int(get("content-length") or 0),
        etag=xmlparse.strip_etag(get("etag", "")),
        last_modified=http_time(get("last-modified")),
        metadata=metadata,
        content_type=get("content-type"),
        version_id=get("x-amz-version-id"),
        is_latest=True,
        is_delete_marker=get("x-amz-delete-marker", "").lower() == "true",
        storage_class=get("x-amz-storage-class"),
        system={n: found[h] for h, n in _SYSTEM_BY_HEADER.items() if h in found},
        server_date=http_time(get("date")) if "date" in found else None,
        checksums=checksums(found),
    )


def checksums(found: Mapping[str, str]) -> dict[str, str]:
    """The `x-amz-checksum-*` answer headers as hex by algorithm: S3 sends base64 of the
    digest (`...=-3` for the composite of a 3-part upload, kept as `<hex>-3`); an unreadable
    value is left out."""
    out: dict[str, str] = {}
    for header, algorithm in CHECKSUM_HEADERS.items():
        value = found.get(header)
        if not value:
            continue
        encoded, dash, parts = value.partition("-")
        try:
            digest = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        out[algorithm] = digest.hex() + (f"-{parts}" if dash and parts.isdigit() else "")
    return out


def checksum_value(digest: bytes) -> str:
    """A digest as an `x-amz-checksum-*` header or a `<ChecksumSHA256>` element carries it."""
    return base64.b64encode(digest).decode("ascii")


def put_result(etag: str | None, version_id: str | None) -> PutResult:
    return PutResult(etag=xmlparse.strip_etag(etag or ""), version_id=version_id)


def write_headers(opts: WriteOptions | None) -> dict[str, str]:
    """Headers that carry `opts` on PUT, CreateMultipartUpload and a REPLACE copy. Values are
    sent as UTF-8 bytes (SeaweedFS keeps them; AWS stores non-ASCII values RFC 2047-encoded)."""
    return http.write_headers(
        opts,
        meta_prefix=META_PREFIX,
        name_chars="-_.",
        bad_name=lambda name: f"metadata name {name!r} is not a valid HTTP header name",
    )
