"""Harness for layer-1 tests of the filesystem core: `BucketFS` over the memory backend.

`make_run_fs(tmp_path)` is the `run_fs` fixture of tests/unit/conftest.py: `run_fs(body, ...)`
runs `body(h)` under `trio.run` with trio's autojump `MockClock`, inside a nursery that runs
`BucketFS.run` (started with `nursery.start`) and is cancelled when the body returns. `h` is a
`Harness`: the `BucketFS`, the `CountingBackend` under it, and helpers that emulate the kernel
(a lookup takes a reference, `forget` drops it) or act as "another client" writing to the bucket
directly.

The core's attribute, entry, negative and listing timeouts are measured with `time.monotonic`
(in `fs.py`, and by `cachetools.TTLCache`), which the mock clock does not move: a test that
needs a cache to expire sets that timeout to 0 instead of sleeping.

Data files are not created ahead in unit tests (an autouse fixture in tests/unit/conftest.py
sets `datafiles.SPARE = 0`): a worker thread in flight lets the autojump clock race through
virtual time, turning the loop hundreds of thousands of times.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio
import trio.testing

from bucketfs.backends.memory import MemoryBackend
from bucketfs.cache.store import BlockCache
from bucketfs.core.fs import BucketFS, FsOptions
from bucketfs.core.nodes import ROOT_INO, Node
from bucketfs.types import ListPage, ObjectInfo, PutResult, WriteOptions

BUCKET = "bkt"  # the memory backend enforces S3 bucket names (3-63 characters)


class CountingBackend(MemoryBackend):
    """The memory backend, counting requests per method in `calls`."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(latency)
        self.calls: Counter[str] = Counter()

    async def head(self, bucket: str, key: str, **kw: Any) -> ObjectInfo:
        self.calls["head"] += 1
        return await super().head(bucket, key, **kw)

    async def get(self, bucket: str, key: str, *args: Any, **kw: Any) -> bytes:
        self.calls["get"] += 1
        return await super().get(bucket, key, *args, **kw)

    def get_stream(
        self, bucket: str, key: str, *args: Any, **kw: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        self.calls["get_stream"] += 1
        return super().get_stream(bucket, key, *args, **kw)

    async def put(self, bucket: str, key: str, data: bytes, *args: Any, **kw: Any) -> PutResult:
        self.calls["put"] += 1
        return await super().put(bucket, key, data, *args, **kw)

    async def copy(self, bucket: str, src: str, dst: str, *args: Any, **kw: Any) -> PutResult:
        self.calls["copy"] += 1
        return await super().copy(bucket, src, dst, *args, **kw)

    async def delete(self, bucket: str, key: str) -> None:
        self.calls["delete"] += 1
        await super().delete(bucket, key)

    async def list_page(self, bucket: str, prefix: str, *args: Any, **kw: Any) -> ListPage:
        self.calls["list_page"] += 1
        return await super().list_page(bucket, prefix, *args, **kw)

    # --- synchronous-looking helpers for "another client" -------------------------------

    async def keys(self, bucket: str = BUCKET, prefix: str = "") -> list[str]:
        """Every key under `prefix`, no delimiter, all pages."""
        out: list[str] = []
        token: str | None = None
        while True:
            page = await self.list_page(bucket, prefix, delimiter=None, token=token)
            out += [o.key for o in page.objects]
            token = page.next_token
            if token is None:
                return out


@dataclass
class Harness:
    fs: BucketFS
    store: CountingBackend
    bucket: str | None

    async def put(self, key: str, data: bytes = b"", **metadata: str) -> PutResult:
        """Another client writes an object (metadata values as the other tool wrote them)."""
        assert self.bucket is not None
        return await self.store.put(self.bucket, key, data, WriteOptions(metadata=metadata))

    async def settle(self) -> None:
        """Let the write-back finish the uploads it has scheduled (what was closed), without
        forcing new ones; the mock clock makes the wait instant."""
        # no trio timeout: the mock clock jumps while an upload reads in a worker thread
        # (pytest-timeout bounds the test instead)
        await self.fs.data.writeback.wait_idle()
        await self.fs.backend.flush()  # unlinks' deferred deletes
        await self.fs.markers.flush()  # mkdir's markers

    async def body(self, key: str) -> bytes:
        assert self.bucket is not None
        await self.settle()
        return await self.store.get(self.bucket, key)

    async def head(self, key: str) -> ObjectInfo:
        assert self.bucket is not None
        await self.settle()
        return await self.store.head(self.bucket, key)

    async def keys(self, prefix: str = "") -> list[str]:
        assert self.bucket is not None
        await self.settle()
        return await self.store.keys(self.bucket, prefix)

    async def lookup(self, path: str) -> Node:
        """Walk `path` ("a/b/c") from the root as the kernel does: one lookup per segment."""
        node = self.fs.table.root
        for name in path.split("/"):
            node = await self.fs.lookup(node.ino, name)
        return node

    async def ls(self, ino: int = ROOT_INO) -> dict[str, Node]:
        """A whole readdir of `ino` without "." and "..", remembering each entry as the
        adapter does."""
        fh = self.fs.opendir(ino)
        try:
            entries = list(await self.fs.readdir(fh, 0))
        finally:
            self.fs.releasedir(fh)
        entries = [entry for entry in entries if entry[0] not in (".", "..")]
        for _name, node, _next in entries:
            self.fs.remember(node)
        return {name: node for name, node, _next in entries}

    async def write_file(
        self, name: str, data: bytes, *, parent: int = ROOT_INO, mode: int = 0o644
    ) -> Node:
        """create + write + flush + release, as `echo data > name` does."""
        fh, node = await self.fs.create(parent, name, mode, os.O_WRONLY | os.O_CREAT, 0, 0)
        if data:
            assert await self.fs.write(fh, 0, data) == len(data)
        await self.fs.flush(fh)
        await self.fs.release(fh)
        return node

    async def read_file(self, node: Node, chunk: int = 128 << 10) -> bytes:
        """open + sequential reads to EOF + release."""
        fh, _keep = await self.fs.open(node.ino, os.O_RDONLY)
        parts: list[bytes] = []
        try:
            while True:
                part = await self.fs.read(fh, sum(map(len, parts)), chunk)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        finally:
            await self.fs.release(fh)


Body = Callable[[Harness], Awaitable[None]]


class RunFs(Protocol):
    def __call__(
        self,
        body: Body,
        *,
        bucket: str | None = BUCKET,
        prefix: str = "",
        latency: float = 0.0,
        **options: Any,
    ) -> None: ...


def make_run_fs(tmp_path: Path) -> RunFs:
    """Run `body(harness)` against a fresh BucketFS over a fresh CountingBackend.

    `bucket=None` makes an all-buckets mount; then no bucket is created. `options` go to
    `FsOptions` (uid and gid are 0 unless given).
    """
    cache = tmp_path / "cache"

    def run(
        body: Body,
        *,
        bucket: str | None = BUCKET,
        prefix: str = "",
        latency: float = 0.0,
        **options: Any,
    ) -> None:
        async def main() -> None:
            store = CountingBackend(latency)
            if bucket is not None:
                await store.create_bucket(bucket)
            opts = FsOptions(**{"uid": 0, "gid": 0, **options})
            fs = BucketFS(store, bucket=bucket, prefix=prefix, options=opts, cache_dir=cache)
            async with trio.open_nursery() as nursery:
                await nursery.start(fs.run)
                store.calls.clear()
                await body(Harness(fs, store, bucket))
                nursery.cancel_scope.cancel()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    return run


def reader_of(fs: BucketFS) -> BlockCache:
    """The block cache under a filesystem (to count what it fetched)."""
    return fs.data.cache


def data_of(size: int, seed: int = 0) -> bytes:
    """`size` reproducible random bytes."""
    return random.Random(seed).randbytes(size)
