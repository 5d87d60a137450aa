"""S3's XML: building request bodies and parsing response bodies, safely.

Owns every `xml.etree` call of the S3 backend. Invariants: a body containing `<!DOCTYPE` or
`<!ENTITY` is refused before the parser sees it (no entity expansion, no external entities);
namespaces are stripped, so lookups use bare tag names; keys, prefixes and markers of listings
requested with `encoding-type=url` are decoded here and nowhere else; ETags leave this module
without quotes and times as POSIX seconds (UTC).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from urllib.parse import unquote

from bucketfs.backends.isotime import iso_seconds
from bucketfs.errors import Transient
from bucketfs.types import BucketInfo, ListPage, ObjectInfo, VersionPage

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_S3_XMLNS = f' xmlns="{_S3_NS}"'.encode()


class UnsafeXML(Transient):
    """The server sent XML we refuse to parse (DOCTYPE/ENTITY) or XML that does not parse."""


def parse(body: bytes) -> ET.Element:
    """Parse a response body into an element tree without namespaces."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise UnsafeXML("refusing XML with a DOCTYPE or ENTITY declaration")
    # S3's own default namespace is dropped before parsing: renaming every element of a
    # 1,000-key listing afterwards costs more than parsing it
    body = body.replace(_S3_XMLNS, b"", 1)
    try:
        root = ET.fromstring(body)  # DTDs and entities refused above
    except ET.ParseError as exc:
        raise UnsafeXML(f"malformed XML from the server: {exc}") from exc
    if root.tag.startswith("{"):  # another default namespace
        for element in root.iter():
            if isinstance(element.tag, str) and element.tag.startswith("{"):
                element.tag = element.tag.split("}", 1)[1]
    return root


def text(element: ET.Element | None, tag: str, default: str = "") -> str:
    """Text of the child `tag` of `element`, or `default`."""
    if element is None:
        return default
    child = element.find(tag)
    if child is None or child.text is None:
        return default
    return child.text


def strip_etag(etag: str) -> str:
    etag = etag.strip().removeprefix("W/").strip('"')
    return etag.replace("&quot;", "") if "&" in etag else etag


def parse_time(value: str) -> float:
    """ISO 8601 as S3 writes it ("2024-05-01T12:00:00.000Z") -> POSIX seconds; 0.0 if absent."""
    return iso_seconds(value) if value else 0.0


@dataclass(frozen=True, slots=True)
class ErrorBody:
    code: str
    message: str


def parse_error(body: bytes) -> ErrorBody | None:
    """The `<Error>` of a body, None if it is not an S3 error document."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = parse(body)
    except UnsafeXML:
        return None
    if root.tag != "Error":
        return None
    return ErrorBody(text(root, "Code"), text(root, "Message"))


# --- request bodies ----------------------------------------------------------------------


def _serialize(root: ET.Element) -> bytes:
    serialized: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return serialized


def _element(tag: str, value: str | None = None) -> ET.Element:
    element = ET.Element(tag)
    if value is not None:
        element.text = value
    return element


def _child(parent: ET.Element, tag: str, value: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if value is not None:
        element.text = value
    return element


def create_bucket_body(region: str) -> bytes:
    root = _element("CreateBucketConfiguration")
    root.set("xmlns", _S3_NS)
    _child(root, "LocationConstraint", region)
    return _serialize(root)


def versioning_body(enabled: bool) -> bytes:
    root = _element("VersioningConfiguration")
    root.set("xmlns", _S3_NS)
    _child(root, "Status", "Enabled" if enabled else "Suspended")
    return _serialize(root)


def delete_body(keys: Iterable[str]) -> bytes:
    root = _element("Delete")
    root.set("xmlns", _S3_NS)
    _child(root, "Quiet", "true")
    for key in keys:
        _child(_child(root, "Object"), "Key", key)
    return _serialize(root)


def complete_body(
    parts: Sequence[tuple[int, str]], checksums: Mapping[int, str] | None = None
) -> bytes:
    """CompleteMultipartUpload's body; `checksums`: each part's SHA-256 (base64) if known."""
    root = _element("CompleteMultipartUpload")
    root.set("xmlns", _S3_NS)
    for number, etag in sorted(parts):
        part = _child(root, "Part")
        _child(part, "PartNumber", str(number))
        _child(part, "ETag", f'"{strip_etag(etag)}"')
        if checksums and number in checksums:
            _child(part, "ChecksumSHA256", checksums[number])
    return _serialize(root)


# --- response bodies ---------------------------------------------------------------------


def _decoder(root: ET.Element) -> Decoder:
    return Decoder(text(root, "EncodingType").lower() == "url")


@dataclass(frozen=True, slots=True)
class Decoder:
    """Undoes `encoding-type=url` (form encoding: `+` is a space) when the server applied it."""

    url: bool

    def __call__(self, value: str) -> str:
        if not self.url:
            return value
        if "%" not in value:
            return value.replace("+", " ") if "+" in value else value
        if "+" not in value and value.count("%") == value.count("%2F"):
            return value.replace("%2F", "/")  # the usual case: only the delimiter is encoded
        return unquote(value.replace("+", " "))  # what `unquote_plus` does


def parse_buckets(root: ET.Element) -> list[BucketInfo]:
    buckets = root.find("Buckets")
    if buckets is None:
        return []
    return [
        BucketInfo(name=text(b, "Name"), created=parse_time(text(b, "CreationDate")))
        for b in buckets.findall("Bucket")
    ]


def _object(element: ET.Element, decode: Decoder, times: dict[str, float]) -> ObjectInfo:
    """A `<Contents>` of ListObjectsV2 (one per key: the hot path of a listing, ~4 us)."""
    # `findtext` looks a child up in C, the first of a repeated tag winning; a missing one or
    # one without text is ""; the storage class is interned: one string for the whole page;
    # `times`: the page's LastModified values already read (keys written in one go share a
    # second, and AWS writes whole seconds too)
    find = element.findtext
    storage_class = find("StorageClass")
    return ObjectInfo(
        decode(find("Key", "")),
        int(find("Size") or 0),
        strip_etag(find("ETag", "")),
        _seconds(find("LastModified", ""), times),
        storage_class=sys.intern(storage_class) if storage_class else None,
    )


def _seconds(modified: str, times: dict[str, float]) -> float:
    """A LastModified value of a page as POSIX seconds, read once per page (`times`)."""
    seconds = times.get(modified)
    if seconds is None:
        seconds = times[modified] = parse_time(modified)
    return seconds


def _version(element: ET.Element, decode: Decoder, times: dict[str, float]) -> ObjectInfo:
    """A `<Version>` or `<DeleteMarker>` of ListObjectVersions."""
    find = element.findtext
    storage_class = find("StorageClass")
    return ObjectInfo(
        decode(find("Key", "")),
        int(find("Size") or 0),
        strip_etag(find("ETag", "")),
        _seconds(find("LastModified", ""), times),
        version_id=find("VersionId") or None,
        is_latest=(find("IsLatest") or "true").lower() == "true",
        is_delete_marker=element.tag == "DeleteMarker",
        storage_class=sys.intern(storage_class) if storage_class else None,
    )


#: S3 lists in UTF-8 byte order, which is also the order of code points: `str`'s own order
#: (a key read from XML has no lone surrogates); sorting what is already sorted is one pass
_BY_KEY = attrgetter("key")


def _prefixes(root: ET.Element, decode: Decoder) -> tuple[str, ...]:
    return tuple(sorted(decode(p.findtext("Prefix", "")) for p in root.iterfind("CommonPrefixes")))


def parse_list_v2(root: ET.Element) -> ListPage:
    decode = _decoder(root)
    times: dict[str, float] = {}
    objects = [_object(c, decode, times) for c in root.iterfind("Contents")]
    objects.sort(key=_BY_KEY)
    truncated = text(root, "IsTruncated").lower() == "true"
    token = text(root, "NextContinuationToken") or None
    return ListPage(
        objects=tuple(objects),
        prefixes=_prefixes(root, decode),
        next_token=token if truncated else None,
    )


def parse_versions(root: ET.Element) -> VersionPage:
    decode = _decoder(root)
    times: dict[str, float] = {}
    versions = tuple(
        _version(child, decode, times) for child in root if child.tag in ("Version", "DeleteMarker")
    )
    truncated = text(root, "IsTruncated").lower() == "true"
    return VersionPage(
        versions=versions,
        prefixes=_prefixes(root, decode),
        next_key_marker=(decode(text(root, "NextKeyMarker")) or None) if truncated else None,
        next_version_marker=(text(root, "NextVersionIdMarker") or None) if truncated else None,
    )


def parse_upload_id(root: ET.Element) -> str:
    upload_id = text(root, "UploadId")
    if not upload_id:
        raise UnsafeXML("InitiateMultipartUpload answer without an UploadId")
    return upload_id


def parse_etag_result(root: ET.Element) -> str:
    """ETag of a CopyObjectResult, CopyPartResult or CompleteMultipartUploadResult."""
    return strip_etag(text(root, "ETag"))


@dataclass(frozen=True, slots=True)
class DeleteFailure:
    key: str
    code: str
    message: str


def parse_delete_errors(root: ET.Element) -> list[DeleteFailure]:
    return [
        DeleteFailure(text(e, "Key"), text(e, "Code"), text(e, "Message"))
        for e in root.findall("Error")
    ]
