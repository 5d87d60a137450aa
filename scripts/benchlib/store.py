"""The independent side of every benchmark: populates buckets and watches what reached the server.

`S3Store` talks to the server directly (never through the counting proxy, so its requests are not
charged to the system under test) with boto3; `LocalStore` plays the same part for the local-disk
baseline, where "on the server" means "written and `sync`ed".

Invariants: populating uses a thread pool and checks nothing it does not need; `wait_*` poll
until the condition holds or raise `TimeoutError` saying what was still missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

POLL = 0.05  # first poll interval; it grows by POLL_GROWTH up to POLL_MAX, so a long wait
POLL_GROWTH = 1.25  # (rclone's 5 s write-back delay) does not load the server it is measuring
POLL_MAX = 0.25
THREADS = 16


class Store(ABC):
    """One bucket (or directory) as the independent client sees it."""

    @abstractmethod
    def create(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None: ...

    @abstractmethod
    def put_many(self, files: dict[str, bytes]) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def size(self, key: str) -> int | None: ...

    @abstractmethod
    def md5(self, key: str) -> str | None: ...

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> bytes | None: ...

    def settle(self) -> None:  # noqa: B027 - a hook, empty on purpose
        """Make written data durable before checking (local disk: sync)."""

    def _poll(self, timeout: float, check: Callable[[], str | None]) -> None:
        """Call `check` until it returns None; it returns what is still missing."""
        deadline = time.monotonic() + timeout
        interval = POLL
        self.settle()
        while True:
            missing = check()
            if missing is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not on the server after {timeout:.0f}s: {missing}")
            time.sleep(interval)
            interval = min(interval * POLL_GROWTH, POLL_MAX)

    def wait_keys(self, prefix: str, expected: Iterable[str], timeout: float) -> None:
        """Until every key of `expected` (in the order written) is listed under `prefix`.

        While the last key written is not on the server, only it is asked about (one HEAD):
        a listing of thousands of keys costs the machine being measured ~0.3 s of CPU (boto3
        listing 2,000 keys from SeaweedFS: 0.21 s in this process, 0.09 s in the server), and
        listings every 0.25 s took about a quarter of the 2 cores while the uploads they
        waited for were bound by CPU (docs/bench.md). Listings then confirm the rest."""
        order = list(expected)
        want = set(order)
        last = order[-1] if order else None

        def check() -> str | None:
            if last is not None and self.size(last) is None:
                return f"the last key written, {last!r}, and maybe others"
            have = set(self.list_keys(prefix))
            lacking = want - have
            if not lacking:
                return None
            return f"{len(lacking)} of {len(want)} keys, e.g. {sorted(lacking)[0]!r}"

        self._poll(timeout, check)

    def wait_gone(self, prefix: str, timeout: float) -> None:
        def check() -> str | None:
            left = self.list_keys(prefix)
            return f"{len(left)} keys still under {prefix!r}, e.g. {left[0]!r}" if left else None

        self._poll(timeout, check)

    def wait_size(self, key: str, size: int, timeout: float) -> None:
        def check() -> str | None:
            got = self.size(key)
            return None if got == size else f"{key!r} has size {got}, want {size}"

        self._poll(timeout, check)

    def wait_range(self, key: str, size: int, start: int, want: bytes, timeout: float) -> None:
        """Until the object has `size` bytes and `want` at `start` (an edit in a large object,
        without downloading it whole at every poll)."""

        def check() -> str | None:
            got = self.size(key)
            if got != size:
                return f"{key!r} has size {got}, want {size}"
            if self.read_range(key, start, start + len(want)) != want:
                return f"{key!r} lacks the new bytes at {start}"
            return None

        self._poll(timeout, check)

    def wait_md5(self, key: str, size: int, md5: str, timeout: float) -> None:
        def check() -> str | None:
            got = self.size(key)
            if got != size:
                return f"{key!r} has size {got}, want {size}"
            digest = self.md5(key)
            return None if digest == md5 else f"{key!r} has md5 {digest}, want {md5}"

        self._poll(timeout, check)


def get_range(client: Any, bucket: str, key: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object with a boto3 client."""
    body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


class S3Store(Store):
    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def create(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    def destroy(self) -> None:
        """Delete every object and the bucket; best effort (frees the server's disk)."""
        keys = self.list_keys("")
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        self.client.delete_bucket(Bucket=self.bucket)

    def put_many(self, files: dict[str, bytes]) -> None:
        def put(item: tuple[str, bytes]) -> None:
            self.client.put_object(Bucket=self.bucket, Key=item[0], Body=item[1])

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(put, files.items()))

    def put_file(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=8
        )
        self.client.upload_file(str(path), self.bucket, key, Config=config)

    def list_keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return out

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError:
            return None

    def read_range(self, key: str, start: int, end: int) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return get_range(self.client, self.bucket, key, start, end)
        except ClientError:
            return None

    def md5(self, key: str) -> str | None:
        """The object's md5: its ETag when that is one (single PUT), else by downloading it."""
        from botocore.exceptions import ClientError

        try:
            etag = str(self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]).strip('"')
            if len(etag) == 32 and "-" not in etag:
                return etag
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError:
            return None
        digest = hashlib.md5()
        try:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
        finally:
            body.close()
        return digest.hexdigest()


class LocalStore(Store):
    """A directory on the local disk; keys are relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> None:
        self.root.mkdir(parents=True)

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def put_many(self, files: dict[str, bytes]) -> None:
        for key, data in files.items():
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def put_file(self, key: str, path: Path) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self.root / key)

    def list_keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                key = os.path.relpath(os.path.join(dirpath, name), self.root)
                if key.startswith(prefix):
                    out.append(key)
        return out

    def size(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except OSError:
            return None

    def md5(self, key: str) -> str | None:
        try:
            return hashlib.md5((self.root / key).read_bytes()).hexdigest()
        except OSError:
            return None

    def read_range(self, key: str, start: int, end: int) -> bytes | None:
        try:
            with open(self.root / key, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except OSError:
            return None

    def settle(self) -> None:
        os.sync()
