"""Behaviour of the in-process stores beyond the shared contract (tests/backends).

The S3 rules that the contract suite does not pin down (name and key limits, multipart ETags,
suspended versioning, resuming a listing after a folded prefix) run against both in-process
stores, memory and local, so they cannot drift apart; `latency` is memory-only.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from bucketfs.backends.base import Backend
from bucketfs.backends.local.backend import LocalBackend
from bucketfs.backends.memory import MemoryBackend
from bucketfs.errors import (
    AlreadyExists,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    NotSupported,
)
from bucketfs.types import WriteOptions

Body = Callable[[Backend], Awaitable[None]]


@pytest.fixture(params=["memory", "local"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Body], None]:
    def runner(body: Body) -> None:
        async def main() -> None:
            backend: Backend
            if request.param == "memory":
                backend = MemoryBackend()
            else:
                backend = LocalBackend(tmp_path / "store", fsync=False)
            try:
                await backend.create_bucket("bkt")
                await body(backend)
            finally:
                await backend.aclose()

        trio.run(main)

    return runner


async def keys_of(backend: Backend, prefix: str = "", delimiter: str | None = "/") -> list[str]:
    out: list[str] = []
    token: str | None = None
    while True:
        page = await backend.list_page("bkt", prefix, delimiter=delimiter, token=token, max_keys=1)
        out += [o.key for o in page.objects] + list(page.prefixes)
        if page.next_token is None:
            return out
        token = page.next_token


def test_bucket_names(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        for bad in ["ab", "A-upper", "x" * 64, "-start", "end-", "a..b", "192.168.1.1", "a_b"]:
            with pytest.raises(InvalidRequest):
                await b.create_bucket(bad)
        with pytest.raises(AlreadyExists):
            await b.create_bucket("bkt")
        with pytest.raises(BucketNotFound):
            await b.head_bucket("../bkt")
        await b.create_bucket("a.b-c" + "9" * 58)
        assert [x.name for x in await b.list_buckets()] == ["a.b-c" + "9" * 58, "bkt"]

    run(body)


def test_key_limits(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        longest = "é" * 512  # 1024 bytes
        await b.put("bkt", longest, b"1")
        assert await b.get("bkt", longest) == b"1"
        for bad in ["", "x" * 1025, "\udc80"]:
            with pytest.raises(InvalidRequest):
                await b.put("bkt", bad, b"1")
        with pytest.raises(InvalidRequest):
            await b.put("bkt", "k", b"1", WriteOptions(metadata={"big": "x" * 3000}))
        with pytest.raises(InvalidRequest):
            await b.put("bkt", "k", b"1", WriteOptions(system={"x_unknown": "1"}))

    run(body)


def test_multipart_rules(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        up = await b.create_multipart("bkt", "mp")
        e1 = await b.upload_part("bkt", "mp", up, 1, b"first")
        e1 = await b.upload_part("bkt", "mp", up, 1, b"FIRST")  # a part uploaded again wins
        e2 = await b.upload_part("bkt", "mp", up, 2, b"second")
        with pytest.raises(InvalidRequest):
            await b.complete_multipart("bkt", "mp", up, [(2, e2), (1, e1)])
        with pytest.raises(InvalidRequest):
            await b.complete_multipart("bkt", "mp", up, [(1, "0" * 32)])
        with pytest.raises(NotFound):
            await b.upload_part("bkt", "other-key", up, 3, b"x")
        with pytest.raises(InvalidRequest):
            await b.upload_part("bkt", "mp", up, 0, b"x")
        result = await b.complete_multipart("bkt", "mp", up, [(1, f'"{e1}"'), (2, e2)])
        digests = hashlib.md5(bytes.fromhex(e1) + bytes.fromhex(e2)).hexdigest()
        assert result.etag == f"{digests}-2"
        assert await b.get("bkt", "mp") == b"FIRSTsecond"
        with pytest.raises(NotFound):
            await b.upload_part("bkt", "mp", up, 3, b"x")
        with pytest.raises(NotFound):
            await b.abort_multipart("bkt", "mp", up)

    run(body)


def test_listing_folds_and_resumes(run: Callable[[Body], None]) -> None:
    keys = ["a", "a/b", "a//b", "a/c/d", "a0", "b/x", "b/y", "c"]

    async def body(b: Backend) -> None:
        for k in keys:
            await b.put("bkt", k, b"")
        assert await keys_of(b) == ["a", "a/", "a0", "b/", "c"]
        assert await keys_of(b, "a/") == ["a//", "a/b", "a/c/"]
        assert await keys_of(b, delimiter=None) == sorted(keys)
        page = await b.list_page("bkt", token="a/")
        assert [o.key for o in page.objects] == ["a0", "c"]
        assert page.prefixes == ("b/",)
        # a page holds at most 1000 entries whatever is asked for
        assert (await b.list_page("bkt", max_keys=10**6)).next_token is None

    run(body)


def test_suspended_versioning(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        await b.put("bkt", "k", b"null-1")
        await b.set_versioning("bkt", True)
        v = await b.put("bkt", "k", b"versioned")
        await b.set_versioning("bkt", False)
        assert await b.get_versioning("bkt") == "Suspended"
        assert (await b.put("bkt", "k", b"null-2")).version_id is None
        page = await b.list_versions_page("bkt")
        assert [(x.version_id, x.is_latest) for x in page.versions] == [
            ("null", True),
            (v.version_id, False),
        ]
        assert await b.get("bkt", "k", version_id="null") == b"null-2"
        await b.delete("bkt", "k")
        page = await b.list_versions_page("bkt")
        assert [(x.version_id, x.is_delete_marker) for x in page.versions] == [
            ("null", True),
            (v.version_id, False),
        ]
        with pytest.raises(NotFound):
            await b.get("bkt", "k", version_id="null")
        assert await b.get("bkt", "k", version_id=v.version_id) == b"versioned"

    run(body)


def test_versions_fold_by_delimiter(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        await b.set_versioning("bkt", True)
        for k in ["d/1", "d/2", "top", "top"]:
            await b.put("bkt", k, b"x")
        page = await b.list_versions_page("bkt", max_keys=2)
        assert page.prefixes == ("d/",)
        assert [v.key for v in page.versions] == ["top"]
        assert page.next_key_marker == "top"
        rest = await b.list_versions_page(
            "bkt", key_marker=page.next_key_marker, version_marker=page.next_version_marker
        )
        assert [(v.key, v.is_latest) for v in rest.versions] == [("top", False)]
        assert rest.next_key_marker is None

    run(body)


def test_conditional_put_on_missing_key(run: Callable[[Body], None]) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(NotFound):
            await b.put("bkt", "nope", b"x", if_match="0" * 32)
        with pytest.raises(NotSupported):
            b.presign("bkt", "nope", 60)

    run(body)


def test_memory_latency_is_per_request() -> None:
    async def main() -> None:
        backend = MemoryBackend(latency=0.5)
        await backend.create_bucket("bkt")
        await backend.put("bkt", "k", b"v")
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(backend.get, "bkt", "k")
        assert trio.current_time() - start == pytest.approx(0.5)
        await backend.head("bkt", "k")
        assert trio.current_time() - start == pytest.approx(1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_importing_the_memory_backend_loads_no_http_client() -> None:
    """Nothing in `bucketfs.backends` is imported eagerly: the memory backend (and the base
    protocol) load neither the HTTP stack nor botocore."""
    code = (
        "import sys, bucketfs.backends.memory, bucketfs.backends.base\n"
        "heavy = ('httpx2', 'httpcore2', 'h11', 'botocore')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
