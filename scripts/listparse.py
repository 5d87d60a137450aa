"""Micro-benchmark: the client CPU of one listing page, per entry, outside the daemon.

What a warm `stat`, `ls -lR` or a directory's revalidation pays per listed key after the
bytes arrived: S3's ListObjectsV2 and ListObjectVersions XML (`xmlparse.parse` + `parse_list_v2`
/ `parse_versions`) and Swift's JSON container listing (`json.loads` + `listing_info`, as
`swift/account.py` does), each into `ObjectInfo`s; and `ObjectInfo(...)` alone. The bodies are
made here the way SeaweedFS 3.x writes them (a ListObjectsV2 `<Contents>`: Key, ETag as
`&#34;...&#34;`, Size, StorageClass, LastModified without a fraction; versions add VersionId,
IsLatest and Owner, and are not URL-encoded) and the way AWS does (LastModified with `.000Z`,
`&quot;`, Owner); `--body FILE` times a captured body instead (XML or JSON by its first byte).

Usage: `PYTHONPATH=. .venv/bin/python scripts/listparse.py [--keys 1000] [--reps 30]
[--profile] [--body FILE]`. Prints the best and the median of `--reps` runs, in us per entry
and ms per page; on a shared host, compare best-of figures taken side by side.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.swift.values import listing_info
from bucketfs.types import ObjectInfo

_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NS = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def make_keys(count: int, seed: int = 17) -> list[str]:
    """`count` keys of one directory, sorted: mostly plain names, some with spaces, a few
    with `&`, `+` or non-ASCII letters (what a user's photos and documents look like)."""
    rng = random.Random(seed)
    tails = [".jpg"] * 6 + [".png", ".txt", " (1).jpg", " copy.jpg", "&co.txt", "+1.pdf", "é.doc"]
    stems = ["IMG", "DSC", "scan", "Holiday photo", "report"]
    keys = {f"photos/2024/{rng.choice(stems)}_{i:05d}{rng.choice(tails)}" for i in range(count)}
    return sorted(keys, key=str.encode)


def _entries(keys: list[str], seed: int = 18) -> list[tuple[str, int, str, int]]:
    rng = random.Random(seed)
    base = 1_764_886_588  # 2025-12-04T22:16:28Z
    return [
        (key, rng.randrange(0, 5 << 20), f"{rng.getrandbits(128):032x}", base + i // 7)
        for i, key in enumerate(keys)
    ]


def _iso(seconds: int, fraction: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.000Z" if fraction else f"{stamp}Z"


def seaweed_v2(keys: list[str]) -> bytes:
    """A ListObjectsV2 page as SeaweedFS writes it (encoding-type=url: `+` for a space)."""
    parts = [
        f"{_HEAD}<ListBucketResult{_NS}><Name>bench</Name><Prefix>photos/2024/</Prefix>"
        "<MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>"
    ]
    for key, size, etag, when in _entries(keys):
        parts.append(
            f"<Contents><Key>{quote(key, safe='/').replace('%20', '+')}</Key>"
            f"<ETag>&#34;{etag}&#34;</ETag><Size>{size}</Size>"
            f"<StorageClass>STANDARD</StorageClass>"
            f"<LastModified>{_iso(when, False)}</LastModified></Contents>"
        )
    parts.append(f"<EncodingType>url</EncodingType><KeyCount>{len(keys)}</KeyCount>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def aws_v2(keys: list[str]) -> bytes:
    """A ListObjectsV2 page as AWS writes it (fetch-owner, encoding-type=url)."""
    parts = [
        f"{_HEAD}<ListBucketResult{_NS}><Name>bench</Name><Prefix>photos/2024/</Prefix>"
        f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>"
        "<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>"
    ]
    for key, size, etag, when in _entries(keys):
        parts.append(
            f"<Contents><Key>{quote(key, safe='/').replace('%20', '+')}</Key>"
            f"<LastModified>{_iso(when, True)}</LastModified>"
            f"<ETag>&quot;{etag}&quot;</ETag><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm>"
            f"<Size>{size}</Size><Owner><ID>{'7' * 64}</ID></Owner>"
            f"<StorageClass>STANDARD</StorageClass></Contents>"
        )
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def seaweed_versions(keys: list[str]) -> bytes:
    """A ListObjectVersions page as SeaweedFS writes it (keys XML-escaped, not URL-encoded)."""
    parts = [
        f"{_HEAD}<ListVersionsResult{_NS}><Name>bench</Name><Prefix>photos/2024/</Prefix>"
        "<MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>"
    ]
    for key, size, etag, when in _entries(keys):
        parts.append(
            f"<Version><Key>{escape(key)}</Key><VersionId>null</VersionId>"
            f"<IsLatest>true</IsLatest><ETag>&#34;{etag}&#34;</ETag><Size>{size}</Size>"
            f"<Owner><ID>admin</ID><DisplayName>admin</DisplayName></Owner>"
            f"<StorageClass>STANDARD</StorageClass>"
            f"<LastModified>{_iso(when, False)}</LastModified></Version>"
        )
    parts.append("</ListVersionsResult>")
    return "".join(parts).encode()


def swift_json(keys: list[str]) -> bytes:
    """A JSON container listing as Swift writes it."""
    items = [
        {
            "bytes": size,
            "hash": etag,
            "name": key,
            "content_type": "image/jpeg",
            "last_modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + ".293540",
        }
        for key, size, etag, when in _entries(keys)
    ]
    return json.dumps(items).encode()


def parse_s3(body: bytes) -> int:
    root = xmlparse.parse(body)
    if root.tag == "ListVersionsResult":
        return len(xmlparse.parse_versions(root).versions)
    return len(xmlparse.parse_list_v2(root).objects)


def parse_swift(body: bytes) -> int:
    items = json.loads(body)
    return len(tuple(listing_info(i) for i in items if "subdir" not in i))


def construct(count: int) -> Callable[[], int]:
    def run() -> int:
        made = [ObjectInfo(f"k{i}", i, "e", 1.0, storage_class="STANDARD") for i in range(count)]
        return len(made)

    return run


def timed(run: Callable[[], int], reps: int) -> tuple[float, float, int]:
    """(best, median) seconds of `reps` runs of `run`, and the entries one run made."""
    entries = run()  # warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), entries


def held_bytes(body: bytes) -> float:
    """Bytes per entry that one parsed page holds (its `ObjectInfo`s and their strings)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    page = xmlparse.parse_list_v2(xmlparse.parse(body))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / max(1, len(page.objects))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="cProfile the S3 V2 parse")
    parser.add_argument("--body", type=Path, help="a captured listing body to time instead")
    args = parser.parse_args()
    keys = make_keys(args.keys)
    cases: list[tuple[str, Callable[[], int]]]
    if args.body is not None:
        body = args.body.read_bytes()
        parse = parse_swift if body.lstrip()[:1] == b"[" else parse_s3
        cases = [(args.body.name, lambda: parse(body))]
    else:
        bodies = {
            "s3 v2 seaweedfs": seaweed_v2(keys),
            "s3 v2 aws": aws_v2(keys),
            "s3 versions seaweedfs": seaweed_versions(keys),
        }
        cases = [(name, lambda b=b: parse_s3(b)) for name, b in bodies.items()]  # type: ignore[misc]
        swift = swift_json(keys)
        cases.append(("swift json", lambda: parse_swift(swift)))
        cases.append(("ObjectInfo() alone", construct(len(keys))))
    print(f"{'case':24} {'us/entry best':>14} {'median':>8} {'ms/page best':>13}  entries")
    for name, run in cases:
        best, median, entries = timed(run, args.reps)
        per = 1e6 / max(1, entries)
        print(f"{name:24} {best * per:14.2f} {median * per:8.2f} {best * 1e3:13.2f}  {entries}")
    if args.body is None:
        print(f"held per V2 entry: {held_bytes(seaweed_v2(keys)):.0f} bytes")
    if args.profile:
        body = seaweed_v2(keys) if args.body is None else args.body.read_bytes()
        profile = cProfile.Profile()
        profile.runcall(lambda: [parse_s3(body) for _ in range(10)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
