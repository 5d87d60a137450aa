"""The names and limits of Swift's Static Large Objects (SLO), and the state of an upload.

Owns where an upload's segments live. Invariants: an upload's segments are
`<container>_segments/<key>/<upload id>/<part, 8 digits>` (the key replaced by its SHA-256 when
the name would pass Swift's 1024 bytes), so they are found from (key, upload id) alone, even in
another process; part numbers are 1..10000. Nothing here sends a request (that is `slo.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import httpx2

from bucketfs.errors import InvalidRequest
from bucketfs.types import WriteOptions

#: Swift's default `max_manifest_segments`
MAX_MANIFEST_SEGMENTS = 1000
#: Swift's limit on an object name, in UTF-8 bytes
MAX_NAME_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload started by `create_multipart` in this process, until completed or aborted."""

    bucket: str
    key: str
    opts: WriteOptions | None


def segments_container(bucket: str) -> str:
    return f"{bucket}_segments"


def segment_prefix(key: str, upload_id: str) -> str:
    """Where an upload's segments live in the segments container (ends with '/')."""
    name = key
    if len(key.encode()) + len(upload_id) + 40 > MAX_NAME_BYTES:
        name = hashlib.sha256(key.encode()).hexdigest()
    return f"{name}/{upload_id}/"


def segment_name(key: str, upload_id: str, part_number: int) -> str:
    if not 1 <= part_number <= 10_000:
        raise InvalidRequest(f"part number {part_number} not in 1..10000")
    return f"{segment_prefix(key, upload_id)}{part_number:08d}"


def is_slo(headers: httpx2.Headers) -> bool:
    return str(headers.get("x-static-large-object", "")).lower() == "true"
