"""The S3 backend against a fake server at the transport layer (`httpx.MockTransport`).

Covers what a real SeaweedFS cannot be made to do on demand: 5xx and throttling answers,
`200 OK` with an `<Error>` body, connections that break mid-body, hostile XML, servers that
ignore `Range`, and DeleteObjects batching. Backoff sleeps run on trio's autojump clock.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2 as httpx
import pytest
import trio
import trio.testing

from bucketfs.backends.http import transport_error
from bucketfs.backends.retry import backoff
from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.s3.backend import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    S3Backend,
    S3Credentials,
    batches,
    encode_query,
    quote_key,
)
from bucketfs.backends.s3.errors import error_class
from bucketfs.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServerNotImplemented,
    Transient,
    Unreachable,
)

Handler = Callable[[httpx.Request], httpx.Response]


def fake(
    handler: Handler, *, endpoint: str | None = "http://s3.test:9000", **kwargs: Any
) -> S3Backend:
    kwargs.setdefault("credentials", S3Credentials("AKIDTEST", "secret"))
    kwargs.setdefault("retry_deadline", 3.0)
    kwargs.setdefault("region", "us-east-1")
    return S3Backend(endpoint, transport=httpx.MockTransport(streaming(handler)), **kwargs)


class _Body(httpx.AsyncByteStream):
    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.content


def streaming(handler: Handler) -> Handler:
    """A response built from bytes is read at once by httpx; a network one is a stream, which
    the backend reads raw. Turn the first into the second."""

    def wrapped(request: httpx.Request) -> httpx.Response:
        response = handler(request)
        if not response.is_stream_consumed:
            return response
        return httpx.Response(
            response.status_code, headers=response.headers, stream=_Body(response.content)
        )

    return wrapped


def run(backend: S3Backend, body: Callable[[S3Backend], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        try:
            return await body(backend)
        finally:
            await backend.aclose()

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def xml_error(code: str, message: str = "msg") -> bytes:
    return f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


# --- the mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "NoSuchKey", NotFound),
        (404, None, NotFound),
        (404, "NoSuchBucket", BucketNotFound),
        (404, "NoSuchUpload", NotFound),
        (403, "AccessDenied", AccessDenied),
        (403, "SignatureDoesNotMatch", AccessDenied),
        (403, "RequestTimeTooSkewed", AccessDenied),
        (401, None, AccessDenied),
        (400, "ExpiredToken", AccessDenied),
        (412, "PreconditionFailed", PreconditionFailed),
        (409, "BucketAlreadyExists", AlreadyExists),
        (409, "BucketAlreadyOwnedByYou", AlreadyExists),
        (409, "BucketNotEmpty", BucketNotEmpty),
        (409, "OperationAborted", Transient),
        (409, "InvalidBucketState", InvalidRequest),
        (400, "InvalidArgument", InvalidRequest),
        (400, "RequestTimeout", Transient),
        (411, None, InvalidRequest),
        (413, None, InvalidRequest),
        (416, "InvalidRange", InvalidRequest),
        (301, "PermanentRedirect", InvalidRequest),
        (429, None, Transient),
        (500, "InternalError", Transient),
        (501, "NotImplemented", ServerNotImplemented),
        (502, None, Transient),
        (503, "SlowDown", Transient),
        (504, None, Transient),
        (None, "NoSuchKey", NotFound),
        (None, "AccessDenied", AccessDenied),
        (None, "InternalError", Transient),
        (None, "SomethingNew", Transient),
    ],
)
def test_error_class(status: int | None, code: str | None, cls: type[BackendError]) -> None:
    assert error_class(status, code) is cls


def test_transport_errors() -> None:
    refused = transport_error(httpx.ConnectError("refused"), "http://h:1", "GET b/k")
    assert type(refused) is Unreachable
    assert "http://h:1" in str(refused)
    assert type(transport_error(httpx.ConnectTimeout("slow"), "e", "w")) is Unreachable
    assert type(transport_error(httpx.ReadTimeout("slow"), "e", "w")) is Transient
    assert type(transport_error(httpx.RemoteProtocolError("eof"), "e", "w")) is Transient


def test_backoff_is_full_jitter_with_a_cap() -> None:
    for attempt in range(40):
        assert 0.0 <= backoff(attempt) <= min(5.0, 0.1 * 2**attempt)


# --- XML ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><Error>&lol;</Error>',
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>',
        b"<x><!ENTITY y 'z'></x>",
    ],
)
def test_xml_with_dtd_is_refused(body: bytes) -> None:
    with pytest.raises(xmlparse.UnsafeXML):
        xmlparse.parse(body)
    assert xmlparse.parse_error(body) is None


def test_xml_namespaces_are_stripped() -> None:
    root = xmlparse.parse(
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>b</Name></ListBucketResult>"
    )
    assert root.tag == "ListBucketResult"
    assert xmlparse.text(root, "Name") == "b"


def test_malformed_xml_is_transient() -> None:
    with pytest.raises(Transient):
        xmlparse.parse(b"<unclosed>")


def test_listing_with_url_encoding_is_decoded() -> None:
    root = xmlparse.parse(
        b"<ListBucketResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
        b"<NextContinuationToken>tok+en</NextContinuationToken>"
        b"<Contents><Key>a+b%2Bc%25d%C3%BC</Key><Size>3</Size><ETag>&quot;abc&quot;</ETag>"
        b"<LastModified>2024-05-01T12:00:00.000Z</LastModified>"
        b"<StorageClass>STANDARD</StorageClass></Contents>"
        b"<CommonPrefixes><Prefix>dir%20x/</Prefix></CommonPrefixes></ListBucketResult>"
    )
    page = xmlparse.parse_list_v2(root)
    assert [o.key for o in page.objects] == ["a b+c%dü"]
    obj = page.objects[0]
    assert (obj.size, obj.etag, obj.storage_class) == (3, "abc", "STANDARD")
    assert obj.last_modified == 1714564800.0
    assert page.prefixes == ("dir x/",)
    assert page.next_token == "tok+en"  # opaque, never decoded


def test_version_listing_keeps_server_order_and_markers() -> None:
    root = xmlparse.parse(
        b"<ListVersionsResult><IsTruncated>false</IsTruncated>"
        b"<DeleteMarker><Key>k</Key><VersionId>3</VersionId><IsLatest>true</IsLatest>"
        b"<LastModified>2024-05-01T12:00:02Z</LastModified></DeleteMarker>"
        b"<Version><Key>k</Key><VersionId>2</VersionId><IsLatest>false</IsLatest>"
        b'<Size>5</Size><ETag>"e2"</ETag></Version>'
        b"<Version><Key>k</Key><VersionId>null</VersionId><IsLatest>false</IsLatest>"
        b"<Size>4</Size></Version></ListVersionsResult>"
    )
    page = xmlparse.parse_versions(root)
    assert [(v.version_id, v.is_latest, v.is_delete_marker) for v in page.versions] == [
        ("3", True, True),
        ("2", False, False),
        ("null", False, False),
    ]
    assert page.next_key_marker is None


def test_request_bodies_escape_keys() -> None:
    body = xmlparse.delete_body(["a&b<c>", "ü"])
    root = ET.fromstring(body)
    assert [k.text for k in root.iter("{http://s3.amazonaws.com/doc/2006-03-01/}Key")] == [
        "a&b<c>",
        "ü",
    ]
    complete = xmlparse.complete_body([(2, "b"), (1, '"a"')])
    assert b"<PartNumber>1</PartNumber><ETag>&quot;a&quot;</ETag>" in complete.replace(
        b'"', b"&quot;"
    )


# --- encoding and addressing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("plain/key.txt", "plain/key.txt"),
        ("a b+c%d", "a%20b%2Bc%25d"),
        ("hash#q?", "hash%23q%3F"),
        ("ü/日", "%C3%BC/%E6%97%A5"),
        ("~tilde-_.", "~tilde-_."),
        ("x/./y/../z", "x/%2E/y/%2E%2E/z"),
        ("*'()!$&,;=:@", "%2A%27%28%29%21%24%26%2C%3B%3D%3A%40"),
    ],
)
def test_quote_key(key: str, path: str) -> None:
    assert quote_key(key) == path


def test_encode_query_is_sorted_and_fully_encoded() -> None:
    assert encode_query({"prefix": "a b/+", "delete": "", "max-keys": "7"}) == (
        "delete=&max-keys=7&prefix=a%20b%2F%2B"
    )


def test_batches_split_at_1000() -> None:
    keys = [str(i) for i in range(2500)]
    assert [len(b) for b in batches(keys)] == [1000, 1000, 500]
    assert [k for b in batches(keys) for k in b] == keys
    assert batches([]) == []


def test_addressing() -> None:
    aws = S3Backend(None, "eu-west-1", anonymous=True)
    assert aws._url("my-bucket", "a b", {}) == "https://my-bucket.s3.eu-west-1.amazonaws.com/a%20b"
    assert (
        aws._url("dotted.bucket", "k", {}) == "https://s3.eu-west-1.amazonaws.com/dotted.bucket/k"
    )
    assert aws._url(None, None, {}) == "https://s3.eu-west-1.amazonaws.com/"
    custom = S3Backend("http://127.0.0.1:8333/", "us-east-1", anonymous=True)
    assert (
        custom._url("b", "k/", {"versionId": "v 1"}) == "http://127.0.0.1:8333/b/k/?versionId=v%201"
    )
    assert custom._url("b", None, {}) == "http://127.0.0.1:8333/b"
    assert custom.description == "s3 http://127.0.0.1:8333"
    trio.run(aws.aclose)
    trio.run(custom.aclose)


# --- requests against the fake server ----------------------------------------------------


def test_requests_are_signed_and_payload_hash_chosen() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"ETag": '"e"', "x-amz-version-id": "v1"})

    result = run(fake(handler), lambda b: b.put("bk", "a b", b"data"))
    assert (result.etag, result.version_id) == ("e", "v1")
    request = seen[0]
    assert request.url.raw_path == b"/bk/a%20b"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert request.headers["x-amz-content-sha256"] == hashlib.sha256(b"data").hexdigest()

    seen.clear()
    run(fake(handler, endpoint="https://s3.test"), lambda b: b.put("bk", "k", b"data"))
    assert seen[0].headers["x-amz-content-sha256"] == UNSIGNED_PAYLOAD
    seen.clear()
    run(fake(handler, endpoint="https://s3.test"), lambda b: b.head("bk", "k"))
    assert seen[0].headers["x-amz-content-sha256"] == EMPTY_SHA256

    seen.clear()
    run(fake(handler, credentials=None, anonymous=True), lambda b: b.head("bk", "k"))
    assert "authorization" not in seen[0].headers


def test_head_reads_metadata_and_system_headers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "HEAD"
        return httpx.Response(
            200,
            headers=[
                (b"Content-Length", b"42"),
                (b"ETag", b'"abc"'),
                (b"Last-Modified", b"Wed, 01 May 2024 12:00:00 GMT"),
                (b"Content-Type", b"text/plain"),
                (b"Cache-Control", b"no-cache"),
                (b"X-Amz-Meta-Mtime", b"1700000000"),
                (b"x-amz-meta-utf8", "h\u00e9".encode()),
                (b"x-amz-meta-latin1", b"caf\xe9"),
                (b"x-amz-meta-rfc2047", b"=?UTF-8?B?aMOp?="),
                (b"x-amz-version-id", b"v9"),
            ],
        )

    info = run(fake(handler), lambda b: b.head("bk", "k"))
    assert info.size == 42
    assert info.etag == "abc"
    assert info.last_modified == 1714564800.0
    assert info.content_type == "text/plain"
    assert info.system == {"cache_control": "no-cache"}
    assert info.metadata == {
        "mtime": "1700000000",
        "utf8": "hé",
        "latin1": "café",
        "rfc2047": "=?UTF-8?B?aMOp?=",
    }
    assert info.version_id == "v9"


def test_write_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"ETag": '"e"'})

    from bucketfs.types import WriteOptions

    opts = WriteOptions({"Mode": "33188"}, "text/x", {"expires": "Thu, 01 Dec 2030 16:00:00 GMT"})
    run(fake(handler), lambda b: b.put("bk", "k", b"", opts, if_none_match=True))
    headers = seen[0].headers
    assert headers["x-amz-meta-mode"] == "33188"
    assert headers["content-type"] == "text/x"
    assert headers["expires"] == "Thu, 01 Dec 2030 16:00:00 GMT"
    assert headers["if-none-match"] == "*"
    with pytest.raises(InvalidRequest):
        run(fake(handler), lambda b: b.put("bk", "k", b"", WriteOptions({"bad name": "x"})))
    with pytest.raises(InvalidRequest):
        run(fake(handler), lambda b: b.put("bk", "k", b"", WriteOptions({"a": "x\r\ny: z"})))


def test_retries_5xx_and_throttling_then_succeeds() -> None:
    answers = [503, 500, 429, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        if status != 200:
            return httpx.Response(status, content=xml_error("SlowDown"))
        return httpx.Response(200, content=b"body")

    assert run(fake(handler), lambda b: b.get("bk", "k")) == b"body"
    assert answers == []


def test_gives_up_after_the_deadline() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, content=xml_error("InternalError"))

    async def body(backend: S3Backend) -> float:
        started = trio.current_time()
        with pytest.raises(Transient, match="gave up after"):
            await backend.get("bk", "k")
        return trio.current_time() - started

    elapsed = run(fake(handler, retry_deadline=30.0), body)
    assert elapsed <= 30.0
    assert calls > 5


def test_refused_connections_end_as_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(Unreachable, match=r"http://s3\.test:9000"):
        run(fake(handler), lambda b: b.list_buckets())


def test_client_errors_are_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(404, content=xml_error("NoSuchKey"))

    with pytest.raises(NotFound):
        run(fake(handler), lambda b: b.get("bk", "k"))
    assert calls == 1


def test_head_bucket_404_is_bucket_not_found() -> None:
    with pytest.raises(BucketNotFound):
        run(fake(lambda r: httpx.Response(404)), lambda b: b.head_bucket("bk"))


def test_ok_with_error_body_is_an_error() -> None:
    answers = [
        httpx.Response(200, content=xml_error("InternalError")),
        httpx.Response(
            200,
            content=b'<CompleteMultipartUploadResult><ETag>"x-2"</ETag>'
            b"</CompleteMultipartUploadResult>",
        ),
    ]
    result = run(
        fake(lambda r: answers.pop(0)),
        lambda b: b.complete_multipart("bk", "k", "up", [(1, "a"), (2, "b")]),
    )
    assert result.etag == "x-2"
    with pytest.raises(AccessDenied):
        run(
            fake(lambda r: httpx.Response(200, content=xml_error("AccessDenied"))),
            lambda b: b.copy("bk", "a", "b", None),
        )


def test_copy_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'<CopyPartResult><ETag>"p"</ETag></CopyPartResult>')

    etag = run(
        fake(handler),
        lambda b: b.upload_part_copy(
            "bk", "dst", "up", 3, "a b+ü", 5, 10, src_version_id="v 1", if_match="e"
        ),
    )
    assert etag == "p"
    headers = seen[0].headers
    assert headers["x-amz-copy-source"] == "/bk/a%20b%2B%C3%BC?versionId=v%201"
    assert headers["x-amz-copy-source-range"] == "bytes=5-9"
    assert headers["x-amz-copy-source-if-match"] == '"e"'
    assert seen[0].url.params["partNumber"] == "3"


def test_range_past_the_end_and_servers_ignoring_range() -> None:
    def answers_416(request: httpx.Request) -> httpx.Response:
        assert request.headers["range"] == "bytes=100-"
        return httpx.Response(416, content=xml_error("InvalidRange"))

    assert run(fake(answers_416), lambda b: b.get("bk", "k", 100)) == b""

    def ignores_range(request: httpx.Request) -> httpx.Response:
        assert request.headers["range"] == "bytes=2-4"
        return httpx.Response(200, content=b"0123456789")

    assert run(fake(ignores_range), lambda b: b.get("bk", "k", 2, 5)) == b"234"

    async def streamed(backend: S3Backend) -> bytes:
        async with backend.get_stream("bk", "k", 2, 5) as chunks:
            return b"".join([c async for c in chunks])

    assert run(fake(ignores_range), streamed) == b"234"


class _BreaksAfterFirstChunk(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"first"
        raise httpx.ReadError("connection reset")


def test_stream_retried_before_first_byte_only() -> None:
    answers = [httpx.Response(503), httpx.Response(200, stream=_BreaksAfterFirstChunk())]

    async def body(backend: S3Backend) -> list[bytes]:
        got: list[bytes] = []

        async def read_all() -> None:
            async with backend.get_stream("bk", "k") as chunks:
                async for chunk in chunks:
                    got.append(chunk)

        with pytest.raises(Transient, match="connection"):
            await read_all()
        return got

    assert run(fake(lambda r: answers.pop(0)), body) == [b"first"]
    assert answers == []


def test_buffered_get_retries_a_body_broken_midway() -> None:
    answers = [
        httpx.Response(200, stream=_BreaksAfterFirstChunk()),
        httpx.Response(200, content=b"whole"),
    ]
    assert run(fake(lambda r: answers.pop(0)), lambda b: b.get("bk", "k")) == b"whole"


def test_delete_many_batches_and_per_key_errors() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.query == b"delete="
        assert "content-md5" in request.headers
        bodies.append(request.content)
        return httpx.Response(
            200,
            content=b"<DeleteResult><Error><Key>0</Key><Code>NoSuchKey</Code></Error>"
            b"</DeleteResult>",
        )

    run(fake(handler), lambda b: b.delete_many("bk", [str(i) for i in range(2500)]))
    assert [body.count(b"<Object>") for body in bodies] == [1000, 1000, 500]
    assert all(b"<Quiet>true</Quiet>" in body for body in bodies)

    def refuses(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=b"<DeleteResult><Error><Key>k</Key><Code>AccessDenied</Code>"
            b"<Message>no</Message></Error></DeleteResult>",
        )

    with pytest.raises(AccessDenied, match="'k'"):
        run(fake(refuses), lambda b: b.delete_many("bk", ["k"]))


def test_delete_of_missing_key_is_fine_but_missing_bucket_is_not() -> None:
    run(
        fake(lambda r: httpx.Response(404, content=xml_error("NoSuchKey"))),
        lambda b: b.delete("bk", "k"),
    )
    with pytest.raises(BucketNotFound):
        run(
            fake(lambda r: httpx.Response(404, content=xml_error("NoSuchBucket"))),
            lambda b: b.delete("bk", "k"),
        )


def test_create_bucket_outside_us_east_1_sends_location() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    run(fake(handler, region="eu-central-1"), lambda b: b.create_bucket("bk"))
    assert b"<LocationConstraint>eu-central-1</LocationConstraint>" in seen[0].content
    seen.clear()
    run(fake(handler), lambda b: b.create_bucket("bk"))
    assert seen[0].content == b""


def test_presign_is_signed_for_the_encoded_key() -> None:
    backend = fake(lambda r: httpx.Response(200))
    url = backend.presign("bk", "a b/ü", 300, version_id="v1")
    assert url.startswith("http://s3.test:9000/bk/a%20b/%C3%BC?")
    assert "versionId=v1" in url
    assert "X-Amz-Expires=300" in url
    assert "X-Amz-Signature=" in url
    trio.run(backend.aclose)


# --- headers and dates as read back (s3_values) --------------------------------------------------


def test_http_dates_read_the_same_by_the_fast_path_and_by_email_utils() -> None:
    import email.utils
    import random

    from bucketfs.backends.s3.values import http_time

    rng = random.Random(7)
    for _ in range(2000):
        when = rng.randrange(0, 4_102_444_800)  # 1970 .. 2100
        text = email.utils.formatdate(when, usegmt=True)
        assert len(text) == 29
        assert http_time(text) == email.utils.parsedate_to_datetime(text).timestamp() == when
    # other forms still go through email.utils; unreadable ones are 0.0
    assert http_time("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    assert http_time("Sun, 06 Nov 1994 08:49:37 +0100") == 784111777.0 - 3600
    assert http_time("Sun, 06 Xyz 1994 08:49:37 GMT") == 0.0
    assert http_time("") == http_time(None) == 0.0


def test_object_info_reads_raw_headers_in_one_pass() -> None:
    from bucketfs.backends.s3.values import object_info

    raw = [
        (b"Content-Length", b"4096"),
        (b"ETag", b'"abc"'),
        (b"Last-Modified", b"Wed, 02 Dec 2026 12:00:00 GMT"),
        (b"Content-Type", b"text/plain"),
        (b"X-Amz-Meta-Mode", b"33188"),
        (b"x-amz-meta-title", "caf\u00e9".encode()),
        (b"x-amz-meta-latin", b"caf\xe9"),
        (b"Cache-Control", b"no-cache"),
        (b"Cache-Control", b"max-age=5"),
        (b"Content-Disposition", 'attachment; filename="\u00e9t\u00e9"'.encode()),
        (b"x-amz-version-id", b"v1"),
        (b"X-Amz-Delete-Marker", b"False"),
    ]
    info = object_info("d/k", raw)
    assert (info.key, info.size, info.etag, info.content_type) == ("d/k", 4096, "abc", "text/plain")
    assert info.last_modified == 1796212800.0
    assert info.metadata == {"mode": "33188", "title": "caf\u00e9", "latin": "caf\u00e9"}
    assert info.system == {
        "cache_control": "no-cache, max-age=5",
        "content_disposition": 'attachment; filename="\u00e9t\u00e9"',
    }
    assert (info.version_id, info.is_delete_marker, info.storage_class) == ("v1", False, None)
    assert object_info("k", []).size == 0
