"""Listing pages into `ObjectInfo`s (S3 XML, Swift JSON) and `ObjectInfo` itself, no server.

The fast paths of session 17 (a hand-written `ObjectInfo.__init__`, `findtext` per field,
`iso_seconds`, Swift's usual values without helpers) must give what the general code gave:
the edges are here (XML entities, empty and truncated pages, server order, repeated or missing
children, URL encoding, version pages, Swift's SLO and delete markers), and the time fast path
is compared with `datetime` on many values. scripts/listparse.py's bodies are parsed too.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import random
import sys
from pathlib import Path

import pytest

from bucketfs.backends.isotime import iso_seconds
from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.swift.values import DELETE_MARKER_TYPE, listing_info
from bucketfs.types import EMPTY, ObjectInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))

import listparse

NS = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


# --- ObjectInfo ----------------------------------------------------------------------------


def test_object_info_init_takes_the_fields_in_order_with_their_defaults() -> None:
    params = list(inspect.signature(ObjectInfo.__init__).parameters.values())[1:]
    fields = dataclasses.fields(ObjectInfo)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default, field.name
        elif field.default_factory is not dataclasses.MISSING:
            assert param.default is field.default_factory(), field.name
        else:
            assert param.default is inspect.Parameter.empty, field.name


def test_object_info_stays_a_frozen_value() -> None:
    info = ObjectInfo("a/b", 3, "e", 1.5, storage_class="STANDARD")
    assert (info.key, info.size, info.etag, info.last_modified) == ("a/b", 3, "e", 1.5)
    assert (info.metadata, info.system, info.checksums) == (EMPTY, EMPTY, EMPTY)
    assert info.metadata is EMPTY
    assert (info.version_id, info.is_latest, info.is_delete_marker) == (None, True, False)
    assert (info.server_date, info.content_type) == (None, None)
    every = {f.name: getattr(info, f.name) for f in dataclasses.fields(ObjectInfo)}
    assert ObjectInfo(**every) == info
    assert info != ObjectInfo("a/b", 3, "e", 1.5)  # storage class differs
    changed = dataclasses.replace(info, size=4, metadata={"m": "v"})
    assert (changed.size, changed.metadata, changed.key) == (4, {"m": "v"}, "a/b")
    assert info.size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.size = 5  # type: ignore[misc]
    assert repr(info).startswith("ObjectInfo(key='a/b', size=3, etag='e', last_modified=1.5,")
    with pytest.raises(TypeError):
        ObjectInfo("k")  # type: ignore[call-arg]


# --- times ---------------------------------------------------------------------------------


def _reference(value: str) -> float:
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def test_iso_seconds_is_what_datetime_says_for_every_form() -> None:
    rng = random.Random(5)
    forms = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%S.%f")
    for _ in range(20000):
        micros = rng.randrange(0, 4_102_444_800 * 10**6)
        when = datetime.datetime.fromtimestamp(micros / 10**6, datetime.UTC)
        when = when.replace(microsecond=micros % 10**6)
        for form in forms:
            value = when.strftime(form)
            assert iso_seconds(value) == _reference(value), value
        millis = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_seconds(millis) == _reference(millis), millis
    assert iso_seconds("2024-05-01T12:00:00.000Z") == 1714564800.0
    assert iso_seconds("2024-05-01T12:00:00") == 1714564800.0  # no zone: UTC, not local
    assert iso_seconds("2024-05-01T14:00:00+02:00") == 1714564800.0
    assert iso_seconds("1969-12-31T23:59:59.5Z") == -0.5
    for bad in ("", "yesterday", "2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z"):
        with pytest.raises(ValueError, match=r"isoformat|range|must be"):
            iso_seconds(bad)


# --- S3 ------------------------------------------------------------------------------------


def _v2(contents: str, tail: str = "<IsTruncated>false</IsTruncated>") -> xmlparse.ListPage:
    body = f"<ListBucketResult{NS}><Name>b</Name>{tail}{contents}</ListBucketResult>"
    return xmlparse.parse_list_v2(xmlparse.parse(body.encode()))


def test_v2_keys_with_xml_entities_and_quoted_etags() -> None:
    page = _v2(
        "<Contents><Key>a&amp;b &lt;c&gt; &#34;d&#34; &#xe9;</Key><Size>1</Size>"
        "<ETag>&#34;e1&#34;</ETag><LastModified>2024-05-01T12:00:00Z</LastModified></Contents>"
        "<Contents><Key>w</Key><Size>2</Size><ETag>W/&quot;e2&quot;</ETag></Contents>"
        '<Contents><Key>x</Key><Size>0</Size><ETag>"&amp;quot;e3&amp;quot;"</ETag></Contents>'
    )
    assert [(o.key, o.etag) for o in page.objects] == [
        ('a&b <c> "d" é', "e1"),
        ("w", "e2"),
        ("x", "e3"),  # a doubly escaped quote, as some servers send it
    ]
    assert page.objects[0].last_modified == 1714564800.0
    assert page.objects[1].last_modified == 0.0  # absent


def test_v2_empty_page() -> None:
    page = _v2("")
    assert (page.objects, page.prefixes, page.next_token) == ((), (), None)
    only_prefixes = _v2(
        "<CommonPrefixes><Prefix>b/</Prefix></CommonPrefixes>"
        "<CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes>"
    )
    assert (only_prefixes.objects, only_prefixes.prefixes) == ((), ("a/", "b/"))


def test_v2_continuation_token_only_when_truncated() -> None:
    token = "<NextContinuationToken>1/a+b%2F==</NextContinuationToken>"
    more = _v2(
        "<Contents><Key>k</Key><Size>1</Size></Contents>", "<IsTruncated>true</IsTruncated>" + token
    )
    assert more.next_token == "1/a+b%2F=="  # opaque: never decoded
    done = _v2(
        "<Contents><Key>k</Key><Size>1</Size></Contents>",
        "<IsTruncated>false</IsTruncated>" + token,
    )
    assert done.next_token is None


def test_v2_objects_in_utf8_byte_order_and_fields_as_found() -> None:
    keys = ["z", "é", "\U0001f600", "a", "\uff5a", "A", "a/b", "a-b"]
    contents = "".join(
        f"<Contents><Key>{k}</Key><Size>{i}</Size><StorageClass>GLACIER</StorageClass>"
        f"<Size>99</Size></Contents>"
        for i, k in enumerate(keys)
    )
    page = _v2(contents + "<Contents><Key>bare</Key></Contents>")
    assert [o.key for o in page.objects] == sorted([*keys, "bare"], key=str.encode)
    by_key = {o.key: o for o in page.objects}
    assert by_key["é"].size == 1  # the first of a repeated child wins
    assert {o.storage_class for o in page.objects if o.key != "bare"} == {"GLACIER"}
    bare = by_key["bare"]
    assert (bare.size, bare.etag, bare.storage_class, bare.version_id) == (0, "", None, None)
    assert (bare.is_latest, bare.is_delete_marker) == (True, False)
    assert bare.metadata is EMPTY


def test_v2_url_encoding_forms() -> None:
    tail = "<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>"
    raw = ["plain", "a+b", "d%2Fe%2Ff", "g%2Fh+i", "%C3%A9t%C3%A9%2Bx", "100%25"]
    page = _v2("".join(f"<Contents><Key>{k}</Key></Contents>" for k in raw), tail)
    assert sorted(o.key for o in page.objects) == sorted(
        ["plain", "a b", "d/e/f", "g/h i", "été+x", "100%"]
    )
    plain = _v2("<Contents><Key>a+b%2F</Key></Contents>")  # no EncodingType: as it is
    assert [o.key for o in plain.objects] == ["a+b%2F"]


def test_versions_markers_entities_and_defaults() -> None:
    body = (
        f"<ListVersionsResult{NS}><IsTruncated>true</IsTruncated>"
        "<NextKeyMarker>k&amp;1</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker>"
        "<Version><Key>k&amp;1</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest>"
        "<ETag>&#34;e&#34;</ETag><Size>7</Size><Owner><ID>admin</ID></Owner>"
        "<StorageClass>STANDARD</StorageClass><LastModified>2024-05-01T12:00:00.000Z"
        "</LastModified></Version>"
        "<DeleteMarker><Key>k&amp;1</Key><VersionId></VersionId></DeleteMarker>"
        "<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes></ListVersionsResult>"
    )
    page = xmlparse.parse_versions(xmlparse.parse(body.encode()))
    first, marker = page.versions
    assert (first.key, first.version_id, first.is_latest, first.is_delete_marker) == (
        "k&1",
        "v2",
        False,
        False,
    )
    assert (first.size, first.etag, first.storage_class) == (7, "e", "STANDARD")
    assert first.last_modified == 1714564800.0
    assert (marker.version_id, marker.is_latest, marker.is_delete_marker) == (None, True, True)
    assert (page.prefixes, page.next_key_marker, page.next_version_marker) == (
        ("p/",),
        "k&1",
        "v9",
    )


# --- Swift ---------------------------------------------------------------------------------


def test_swift_listing_info_usual_and_unusual_entries() -> None:
    usual = listing_info(
        {
            "name": "a/b",
            "bytes": 5,
            "hash": "0123456789abcdef0123456789abcdef",
            "content_type": "image/jpeg",
            "last_modified": "2024-05-01T12:00:00.250000",
        }
    )
    assert (usual.key, usual.size, usual.etag, usual.content_type) == (
        "a/b",
        5,
        "0123456789abcdef0123456789abcdef",
        "image/jpeg",
    )
    assert usual.last_modified == 1714564800.25
    assert (usual.version_id, usual.is_latest, usual.is_delete_marker) == (None, True, False)
    slo = listing_info(
        {
            "name": "big",
            "bytes": 10,
            "hash": "ffff",
            "slo_etag": '"abcd"',
            "content_type": "application/octet-stream;swift_bytes=10",
            "last_modified": "not a time",
            "version_id": "",
        }
    )
    assert (slo.etag, slo.content_type, slo.last_modified, slo.version_id) == (
        "abcd",
        "application/octet-stream",
        0.0,
        None,
    )
    marker = listing_info(
        {
            "name": "gone",
            "bytes": 0,
            "hash": "d41d8cd98f00b204e9800998ecf8427e",
            "content_type": DELETE_MARKER_TYPE,
            "version_id": "1700000000.00000",
            "is_latest": False,
        }
    )
    assert (marker.is_delete_marker, marker.is_latest, marker.version_id) == (
        True,
        False,
        "1700000000.00000",
    )
    assert marker.last_modified == 0.0  # absent
    odd = listing_info({"name": "o", "hash": ' W/"x y" ', "content_type": None})
    assert (odd.etag, odd.content_type, odd.size) == ("x y", None, 0)


# --- the micro-benchmark's bodies ------------------------------------------------------------


def test_listparse_bodies_parse_to_every_key() -> None:
    keys = listparse.make_keys(200)
    for make in (listparse.seaweed_v2, listparse.aws_v2):
        page = xmlparse.parse_list_v2(xmlparse.parse(make(keys)))
        assert [o.key for o in page.objects] == keys
        assert all(len(o.etag) == 32 and o.storage_class == "STANDARD" for o in page.objects)
    versions = xmlparse.parse_versions(xmlparse.parse(listparse.seaweed_versions(keys)))
    assert [v.key for v in versions.versions] == keys
    assert listparse.parse_swift(listparse.swift_json(keys)) == len(keys)
