"""Our SigV4 signer against botocore's `S3SigV4Auth`: the same request, time and payload hash
must give byte-identical headers, and a request the S3 backend sends carries that signature."""

from __future__ import annotations

import datetime

import httpx2 as httpx
import pytest
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bucketfs.backends.s3 import sigv4
from bucketfs.backends.s3.backend import EMPTY_SHA256, UNSIGNED_PAYLOAD, S3Backend, S3Credentials
from tests.unit.backends.test_s3_errors import streaming

CASES = [
    ("GET", "bucket.s3.example.com", "/", "", {}, EMPTY_SHA256),
    ("HEAD", "127.0.0.1:8333", "/b/a%20b/c%2B%C3%A9", "", {}, EMPTY_SHA256),
    ("GET", "127.0.0.1:8333", "/b", "list-type=2&prefix=a%2F&delimiter=%2F", {}, EMPTY_SHA256),
    ("POST", "127.0.0.1:8333", "/b/k", "uploads=", {"Content-Type": "x"}, EMPTY_SHA256),
    (
        "PUT",
        "s3.amazonaws.com",
        "/b/%2E%2E/x",
        "partNumber=2&uploadId=abc%3D",
        {
            "x-amz-meta-mode": "  33188  ",
            "x-amz-meta-name": "caf\u00e9 au  lait",
            "If-None-Match": "*",
            "Content-Length": "4",
            "User-Agent": "not signed",
            "Expect": "100-continue",
        },
        UNSIGNED_PAYLOAD,
    ),
    ("GET", "h", "/b/k", "versionId=v1&a=2&a=1", {"Range": "bytes=0-9"}, "ab" * 32),
]


def botocore_headers(
    method: str,
    host: str,
    path: str,
    query: str,
    headers: dict[str, str],
    payload: str,
    token: str | None,
) -> dict[str, str]:
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers={"Host": host, **headers})

    class Signer(S3SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            return payload

    Signer(Credentials("AKID", "secret/key", token), "s3", "eu-west-3").add_auth(request)
    return dict(request.headers.items())


def amz_time(stamp: str) -> float:
    return (
        datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC).timestamp()
    )


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[2]}" for c in CASES])
def test_same_signature_as_botocore(case: tuple, token: str | None) -> None:  # type: ignore[type-arg]
    method, host, path, query, headers, payload = case
    theirs = botocore_headers(method, host, path, query, headers, payload, token)
    ours = sigv4.sign(
        method,
        host,
        path,
        query,
        headers,
        payload,
        access_key="AKID",
        secret_key="secret/key",
        session_token=token,
        region="eu-west-3",
        now=amz_time(theirs["X-Amz-Date"]),
    )
    assert ours["Authorization"] == theirs["Authorization"]
    assert {k.lower(): v for k, v in ours.items()} == {k.lower(): v for k, v in theirs.items()}


def test_signing_key_is_cached_per_day() -> None:
    sigv4.signing_key.cache_clear()
    for _ in range(3):
        sigv4.signing_key("s", "20261121", "r", "s3")
    sigv4.signing_key("s", "20261122", "r", "s3")
    info = sigv4.signing_key.cache_info()
    assert (info.hits, info.misses) == (2, 2)


def test_canonical_query_orders_pairs() -> None:
    assert sigv4.canonical_query("b=2&a=&c") == "a=&b=2&c="
    assert sigv4.canonical_query("") == ""


def test_backend_sends_what_it_signed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"ETag": '"e"', "Content-Length": "0"})

    async def main() -> None:
        backend = S3Backend(
            "http://127.0.0.1:9",
            region="us-east-1",
            credentials=S3Credentials("AKID", "secret"),
            transport=httpx.MockTransport(streaming(handler)),
        )
        await backend.head("bucket", "dir/a b")
        await backend.aclose()

    trio.run(main)  # the handler answers through `streaming`, as a server would
    (request,) = seen
    assert request.headers["Host"] == "127.0.0.1:9"
    assert request.url.raw_path == b"/bucket/dir/a%20b"
    assert request.headers["Accept-Encoding"] == "identity"
    auth = request.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKID/")
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date" in auth
    expected = sigv4.sign(
        "HEAD",
        "127.0.0.1:9",
        "/bucket/dir/a%20b",
        "",
        {},
        EMPTY_SHA256,
        access_key="AKID",
        secret_key="secret",
        session_token=None,
        region="us-east-1",
        now=amz_time(request.headers["X-Amz-Date"]),
    )
    assert auth == expected["Authorization"]
