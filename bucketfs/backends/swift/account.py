"""The Swift account and its containers: the bucket half of `base.Backend`, usage figures, and
container listings.

Owns what is asked of the account or of a container as a whole: containers as buckets,
versioning (`X-Versions-Enabled`), usage and quota (`X-Container-Bytes-Used`,
`X-Container-Meta-Quota-Bytes`, the account's alike), container metadata
(`X-Container-Meta-*`) and JSON listings turned into `ListPage`/`VersionPage`. Invariants:

- the container's Temp-URL keys (`X-Container-Meta-Temp-URL-Key`, `-Key-2`) are secrets: never
  returned as metadata, never changed through it;
- a segments container (`<name>_segments`, `<name>+segments`) is not listed as a bucket when
  the container it serves is listed too, and goes with it in `delete_bucket` when empty;
- a listing page asks for one entry more than it returns, so `next_token` is None exactly at
  the end; a version listing resumed after a common prefix skips that prefix (Swift repeats
  it); pages are capped below Swift's `container_listing_limit`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import httpx2

from bucketfs.backends.base import Space
from bucketfs.backends.http import header_text
from bucketfs.backends.swift.client import MAX_LISTING, SwiftClient
from bucketfs.backends.swift.segments import segments_container
from bucketfs.backends.swift.values import listing_info, listing_time, version_id
from bucketfs.errors import BucketNotEmpty, BucketNotFound, InvalidRequest
from bucketfs.types import BucketInfo, ListPage, VersionPage

_CONTAINER_META = "x-container-meta-"
#: container metadata that is a credential, not a setting (TempURL keys of the container)
_SECRET_KEYS = frozenset({"temp-url-key", "temp-url-key-2"})


class SwiftAccount(SwiftClient):
    """Containers, their versioning, usage and listings."""

    async def list_buckets(self) -> list[BucketInfo]:
        """Every container, except the segments containers of listed ones (`_is_segments_of`)."""
        items: list[Mapping[str, Any]] = []
        marker: str | None = None
        while True:
            query = {"limit": str(MAX_LISTING)} | ({"marker": marker} if marker else {})
            page = await self._json(None, query)
            items.extend(page)
            if len(page) < MAX_LISTING:
                break
            marker = str(page[-1]["name"])
        names = {str(item["name"]) for item in items}
        return [
            BucketInfo(str(item["name"]), listing_time(item.get("last_modified")))
            for item in items
            if not _is_segments_of(str(item["name"]), names)
        ]

    async def head_bucket(self, bucket: str) -> None:
        await self._request("HEAD", bucket, container_level=True)

    async def create_bucket(self, bucket: str) -> None:
        """PUT the container (an existing one is kept as it is: Swift answers 202)."""
        await self._request("PUT", bucket, container_level=True)

    async def delete_bucket(self, bucket: str) -> None:
        """Delete the container, then its `<name>_segments` container if that is empty."""
        await self._request("DELETE", bucket, container_level=True)
        with suppress(BucketNotFound, BucketNotEmpty):
            await self._request("DELETE", segments_container(bucket), container_level=True)

    async def get_versioning(self, bucket: str) -> str:
        response, _ = await self._request("HEAD", bucket, container_level=True)
        enabled = response.headers.get("x-versions-enabled")
        if enabled is None:
            return "Off"
        return "Enabled" if enabled.lower() == "true" else "Suspended"

    async def set_versioning(self, bucket: str, enabled: bool) -> None:
        headers = {"X-Versions-Enabled": "true" if enabled else "false"}
        await self._request("POST", bucket, headers=headers, container_level=True)

    async def usage(self, bucket: str | None = None) -> tuple[int, int]:
        """(bytes used, object count) of a container, or of the account when `bucket` is None
        (the account's figures lag until the container updater ran)."""
        response, _ = await self._request("HEAD", bucket, container_level=bucket is not None)
        kind = "container" if bucket is not None else "account"
        return (
            int(response.headers.get(f"x-{kind}-bytes-used", "0")),
            int(response.headers.get(f"x-{kind}-object-count", "0")),
        )

    async def space(self, bucket: str | None) -> Space:
        """Bytes and objects used and the quota (when set) of a container, or of the account
        when `bucket` is None, from one HEAD."""
        response, _ = await self._request("HEAD", bucket, container_level=bucket is not None)
        kind = "container" if bucket is not None else "account"
        headers = response.headers
        return Space(
            bytes_used=_count(headers, f"x-{kind}-bytes-used") or 0,
            object_count=_count(headers, f"x-{kind}-object-count") or 0,
            quota_bytes=_count(headers, f"x-{kind}-meta-quota-bytes"),
            quota_count=_count(headers, f"x-{kind}-meta-quota-count"),
        )

    async def bucket_metadata(self, bucket: str) -> dict[str, str]:
        """`X-Container-Meta-*` of the container, names lower case (Temp-URL keys left out)."""
        response, _ = await self._request("HEAD", bucket, container_level=True)
        metadata: dict[str, str] = {}
        for raw_name, raw_value in response.headers.raw:
            name = raw_name.decode("latin-1").lower()
            if name.startswith(_CONTAINER_META) and name[len(_CONTAINER_META) :]:
                key = name[len(_CONTAINER_META) :]
                if key not in _SECRET_KEYS:
                    metadata[key] = header_text(raw_value)
        return metadata

    async def set_bucket_metadata(self, bucket: str, changes: dict[str, str | None]) -> None:
        """One POST: `X-Container-Meta-K: v` sets, `X-Remove-Container-Meta-K` removes."""
        headers: dict[str, str] = {}
        for key, value in changes.items():
            name = key.lower()
            if not name or not all(c.isascii() and (c.isalnum() or c in "-.") for c in name):
                raise InvalidRequest(
                    f"metadata name {key!r} cannot be stored in Swift (letters, digits, '-', '.')"
                )
            if name in _SECRET_KEYS:
                raise InvalidRequest(f"{key} is a Temp-URL key, not metadata")
            if value is None:
                headers[f"X-Remove-Container-Meta-{name}"] = "x"
            elif "\r" in value or "\n" in value or not value:
                raise InvalidRequest(f"the value of {key} cannot be sent in a header")
            else:
                headers[f"X-Container-Meta-{name}"] = value
        await self._request("POST", bucket, headers=headers, container_level=True)

    async def _listing(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None,
        marker: str | None,
        max_keys: int,
        extra: Mapping[str, str | None],
    ) -> tuple[list[Mapping[str, Any]], bool]:
        """Up to `max_keys` entries after `marker` and whether more follow (asks for one more)."""
        max_keys = max(1, min(max_keys, MAX_LISTING - 1))
        query: dict[str, str | None] = {"limit": str(max_keys + 1), **extra}
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if marker:
            query["marker"] = marker
        items: list[Mapping[str, Any]] = await self._json(bucket, query)
        return items[:max_keys], len(items) > max_keys

    async def list_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        items, more = await self._listing(bucket, prefix, delimiter, token, max_keys, {})
        objects = tuple(listing_info(i) for i in items if "subdir" not in i)
        prefixes = tuple(str(i["subdir"]) for i in items if "subdir" in i)
        last = items[-1] if items else None
        next_token = None
        if more and last is not None:
            next_token = str(last.get("subdir") or last["name"])
        return ListPage(objects, prefixes, next_token)

    async def list_versions_page(
        self,
        bucket: str,
        prefix: str = "",
        *,
        delimiter: str | None = "/",
        key_marker: str | None = None,
        version_marker: str | None = None,
        max_keys: int = 1000,
    ) -> VersionPage:
        extra: dict[str, str | None] = {"versions": None}
        if key_marker and version_marker:
            extra["version_marker"] = version_marker
        max_keys = max(1, min(max_keys, MAX_LISTING - 2))
        # one more than asked: a listing resumed after a common prefix repeats it first
        items, more = await self._listing(
            bucket, prefix, delimiter, key_marker, max_keys + 1, extra
        )
        if key_marker and not version_marker and items and items[0].get("subdir") == key_marker:
            items = items[1:]
        if len(items) > max_keys:
            items, more = items[:max_keys], True
        versions = tuple(listing_info(i) for i in items if "subdir" not in i)
        prefixes = tuple(str(i["subdir"]) for i in items if "subdir" in i)
        next_key = next_version = None
        if more and items:
            last = items[-1]
            if "subdir" in last:
                next_key = str(last["subdir"])
            else:
                next_key, next_version = str(last["name"]), version_id(last.get("version_id"))
        return VersionPage(versions, prefixes, next_key, next_version)


def _count(headers: httpx2.Headers, name: str) -> int | None:
    """A non-negative integer header; None when missing or not a number (a quota someone set
    to nonsense is no quota: Swift's own middleware would refuse to enforce it)."""
    value = headers.get(name)
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _is_segments_of(name: str, names: set[str]) -> bool:
    """`<name>_segments` (ours, the `swift` CLI's) or `<name>+segments` (s3api's multipart
    uploads) of a container that is listed too."""
    return any(
        name.endswith(suffix) and name.removesuffix(suffix) in names
        for suffix in ("_segments", "+segments")
    )
