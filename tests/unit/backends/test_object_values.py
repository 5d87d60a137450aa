"""How checksums and expiry times travel in S3's and Swift's headers (no server needed; the
round trips through real servers are tests/backends/test_object_extras.py)."""

from __future__ import annotations

import base64
import hashlib
import time

import httpx2

from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.s3.values import checksum_value, checksums, object_info
from bucketfs.backends.swift import values as swift
from bucketfs.types import WriteOptions


def test_s3_checksums_are_hex_and_keep_the_part_count() -> None:
    digest = hashlib.sha256(b"x").digest()
    found = {
        "x-amz-checksum-sha256": checksum_value(digest),
        "x-amz-checksum-crc32c": base64.b64encode(b"\x01\x02\x03\x04").decode() + "-12",
        "x-amz-checksum-sha1": "not base64!",
        "x-amz-checksum-type": "COMPOSITE",
    }
    assert checksums(found) == {"sha256": digest.hex(), "crc32c": "01020304-12"}
    raw = [(b"X-Amz-Checksum-SHA256", checksum_value(digest).encode()), (b"Etag", b'"e"')]
    assert object_info("k", raw).checksums == {"sha256": digest.hex()}
    assert object_info("k", [(b"Etag", b'"e"')]).checksums == {}


def test_s3_completion_lists_the_known_part_checksums() -> None:
    body = xmlparse.complete_body([(2, "b"), (1, "a")], {2: "c2hh"}).decode()
    assert body.index("<PartNumber>1</PartNumber>") < body.index("<PartNumber>2</PartNumber>")
    assert body.count("<ChecksumSHA256>") == 1
    assert "<ChecksumSHA256>c2hh</ChecksumSHA256>" in body.split("<PartNumber>2")[1]


def test_swift_delete_at_both_ways() -> None:
    later = int(time.time()) + 600
    iso = swift.iso_delete_at(str(later))
    assert iso is not None
    assert iso.endswith("Z")
    assert swift.delete_at_header(iso) == str(later)
    assert swift.iso_delete_at("soon") is None
    assert swift.delete_at_header("2001-01-01T00:00:00Z") is None  # past: not sent
    headers = swift.write_headers(WriteOptions(system={"delete_at": iso, "expires": "x"}))
    assert headers["X-Delete-At"] == str(later)
    assert headers["Expires"] == "x"
    assert "X-Delete-At" not in swift.write_headers(WriteOptions(system={"expires": "x"}))
    info = swift.object_info("k", httpx2.Headers({"X-Delete-At": str(later), "Etag": "e"}))
    assert info.system == {"delete_at": iso}


def test_swift_md5_only_for_plain_objects() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    plain = swift.object_info("k", httpx2.Headers({"Etag": f'"{md5}"'}))
    assert plain.checksums == {"md5": md5}
    slo = httpx2.Headers({"Etag": f'"{md5}"', "X-Static-Large-Object": "True"})
    assert swift.object_info("k", slo).checksums == {}
    dlo = httpx2.Headers({"Etag": f'"{md5}"', "X-Object-Manifest": "c/p"})
    assert swift.object_info("k", dlo).checksums == {}
