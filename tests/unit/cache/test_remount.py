"""Clean cached blocks survive an unmount and a mount of the same cache directory
(cache/store.py `_load`, `close`): they are served without a GET while the object's ETag is
unchanged, dropped when it changed, dropped when they cannot be trusted (the machine restarted
since a mount that did not sync them), and evicted least recently used first across mounts."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from bucketfs.cache.datafiles import DataFiles
from bucketfs.cache.index import CacheIndex
from bucketfs.cache.store import BOOT_SETTING, SYNCED_SETTING
from bucketfs.core.fs import BucketFS, FsOptions
from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import CountingBackend

BUCKET = "bucket"
MiB = 1 << 20


def life(
    store: CountingBackend,
    cache_dir: Path,
    body: Callable[[BucketFS], Awaitable[None]],
    **options: object,
) -> None:
    """One mount of `cache_dir`: start, run `body`, stop (the cache is closed as at unmount)."""

    async def main() -> None:
        fs = BucketFS(
            store,
            bucket=BUCKET,
            prefix="",
            options=FsOptions(uid=0, gid=0, **options),  # type: ignore[arg-type]
            cache_dir=cache_dir,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)
            await body(fs)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def read_all(fs: BucketFS, name: str) -> bytes:
    node = await fs.lookup(ROOT_INO, name)
    fh, _keep = await fs.open(node.ino, os.O_RDONLY)
    out = bytearray()
    try:
        while chunk := await fs.read(fh, len(out), 128 << 10):
            out += chunk
    finally:
        await fs.release(fh)
    return bytes(out)


def gets(store: CountingBackend) -> int:
    return store.calls["get"] + store.calls["get_stream"]


def seeded(tmp_path: Path, objects: dict[str, bytes]) -> CountingBackend:
    store = CountingBackend()

    async def seed() -> None:
        await store.create_bucket(BUCKET)
        for name, data in objects.items():
            await store.put(BUCKET, name, data)

    trio.run(seed)
    return store


def test_clean_blocks_are_read_again_without_a_get_after_a_remount(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    store = seeded(tmp_path, {"big": data})
    cache_dir = tmp_path / "cache"

    async def first(fs: BucketFS) -> None:
        assert await read_all(fs, "big") == data

    life(store, cache_dir, first)
    assert gets(store) > 0
    before = gets(store)

    async def second(fs: BucketFS) -> None:
        assert await read_all(fs, "big") == data
        assert fs.data.cache.clean_bytes == 4 * MiB  # counted against cache_size again

    life(store, cache_dir, second)
    assert gets(store) == before, "a remount fetched blocks its cache still had"


def test_clean_blocks_of_an_object_changed_meanwhile_are_not_served(tmp_path: Path) -> None:
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    store = seeded(tmp_path, {"f": old})
    cache_dir = tmp_path / "cache"

    async def first(fs: BucketFS) -> None:
        assert await read_all(fs, "f") == old

    life(store, cache_dir, first)
    trio.run(store.put, BUCKET, "f", new)  # another client, while nothing is mounted

    async def second(fs: BucketFS) -> None:
        assert await read_all(fs, "f") == new

    life(store, cache_dir, second)


def test_clean_blocks_are_dropped_after_a_restart_that_did_not_sync_them(
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * MiB)
    store = seeded(tmp_path, {"f": data})
    cache_dir = tmp_path / "cache"

    async def read(fs: BucketFS) -> None:
        assert await read_all(fs, "f") == data

    life(store, cache_dir, read)
    # as if the mount had been killed (no sync at unmount) and the machine restarted since
    index = CacheIndex(cache_dir / "index.sqlite")
    index.set_setting(SYNCED_SETTING, "0")
    index.set_setting(BOOT_SETTING, "another boot")
    index.close()
    before = gets(store)

    async def second(fs: BucketFS) -> None:
        assert fs.data.cache.clean_bytes == 0
        assert await read_all(fs, "f") == data

    life(store, cache_dir, second)
    assert gets(store) > before

    # killed, but the machine did not restart: the page cache still holds what was written
    index = CacheIndex(cache_dir / "index.sqlite")
    index.set_setting(SYNCED_SETTING, "0")
    index.close()
    before = gets(store)
    life(store, cache_dir, read)
    assert gets(store) == before


def _three_read_b_oldest(tmp_path: Path) -> tuple[dict[str, bytes], CountingBackend, Path]:
    """Objects a, b, c of 1 MiB, read through a mount of a new cache directory in the order
    a, b, c, a (b is the least recently used)."""
    objects = {name: os.urandom(MiB) for name in ("a", "b", "c")}
    store = seeded(tmp_path, objects)
    cache_dir = tmp_path / "cache"

    async def first(fs: BucketFS) -> None:
        for name in ("a", "b", "c", "a"):
            assert await read_all(fs, name) == objects[name]

    life(store, cache_dir, first)
    return objects, store, cache_dir


def test_the_least_recently_used_files_are_evicted_first_across_mounts(tmp_path: Path) -> None:
    _objects, store, cache_dir = _three_read_b_oldest(tmp_path)

    async def second(fs: BucketFS) -> None:
        cache = fs.data.cache
        assert cache.clean_bytes == 2 * MiB
        assert sorted(k for (_b, k), cf in cache.by_key.items() if cf.present) == ["a", "c"]

    life(store, cache_dir, second, cache_size=2 * MiB)


class Killed(BaseException):
    """The daemon dies here."""


def test_a_kill_right_after_a_truncate_cut_the_data_file_never_reads_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached clean file opened with O_TRUNC: the index records the truncate before the
    data file is cut (cache/store.py `truncate`). Killed between the two, the next mount
    found rows saying the cut blocks were there and clean, and read the file back as zeros
    (tests/faults/test_crash.py, session 20). Now it finds the truncated file; and blocks
    dropped from the cache lose their rows before their holes are punched (blocks.py `drop`)."""
    data = os.urandom(3 * MiB + 5)
    store = seeded(tmp_path, {"f": data})
    cache_dir = tmp_path / "cache"
    real = DataFiles.truncate

    def cut_then_die(self: DataFiles, file_id: int, fd: int, size: int) -> None:
        real(self, file_id, fd, size)
        raise Killed()

    async def first(fs: BucketFS) -> None:
        assert await read_all(fs, "f") == data  # the cache holds it, clean
        node = await fs.lookup(ROOT_INO, "f")
        monkeypatch.setattr(DataFiles, "truncate", cut_then_die)
        with pytest.raises(Killed):
            await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
        monkeypatch.setattr(DataFiles, "truncate", real)

    async def second(fs: BucketFS) -> None:
        got = await read_all(fs, "f")
        assert got in (data, b""), f"{len(got)} bytes, {got[:8]!r}..."

    life(store, cache_dir, first)
    life(store, cache_dir, second)


def test_a_kill_right_after_an_eviction_punched_its_holes_never_reads_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks evicted (here at a mount with a smaller `cache_size`) lose their index rows
    before their holes are punched: killed right after the punch, the next mount fetches
    them again instead of reading the holes as the file's bytes."""
    objects, store, cache_dir = _three_read_b_oldest(tmp_path)
    real = DataFiles.punch

    def punch_then_die(self: DataFiles, file_id: int, punch: Callable[[int], None]) -> None:
        real(self, file_id, punch)
        raise Killed()

    async def never(fs: BucketFS) -> None:
        raise AssertionError("the mount started although its eviction was killed")

    monkeypatch.setattr(DataFiles, "punch", punch_then_die)
    with pytest.raises(BaseException) as died:  # noqa: PT011 - Killed, maybe in a group
        life(store, cache_dir, never, cache_size=2 * MiB)
    assert (
        died.group_contains(Killed)
        if isinstance(died.value, BaseExceptionGroup)
        else (isinstance(died.value, Killed))
    )
    monkeypatch.setattr(DataFiles, "punch", real)
    _release_locks(cache_dir)  # a killed process's descriptors close with it

    async def read(fs: BucketFS) -> None:
        for name, data in objects.items():
            assert await read_all(fs, name) == data, name

    life(store, cache_dir, read)


def _release_locks(cache_dir: Path) -> None:
    """Close this process's descriptors on the cache directory's lock file."""
    lock = str(cache_dir / "lock")
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == lock:
                os.close(int(fd))
        except OSError:
            continue
