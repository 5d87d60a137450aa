"""Early parts (bucketfs/cache/early.py) through a real mount, on SeaweedFS, the local store and
Swift: a large new file's full parts are sent while it is written; whatever happens to the file
meanwhile (a rewrite of a sent part, a truncate, an unlink, an fsync), the object on the server
is what was closed last, with the final metadata (mtime, mode, user xattrs), and no multipart
upload is left open.

Parts of 5 MiB (`part_size=5M`) keep the files small; `early_parts=on` on every store (auto is
on for SeaweedFS and Swift, whose copy onto itself changes metadata only; off for the local
store, not across a network: see `test_auto_follows_the_store`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import Mount, MountFactory

MiB = 1 << 20
PART = 5 * MiB
OLD = 1_000_000_000  # 2001-09-09T01:46:40Z


def pattern(seed: int, size: int) -> bytes:
    """Bytes that differ at every MiB and with `seed` (a misplaced part is seen)."""
    out = bytearray()
    for i in range(-(-size // MiB)):
        out += (f"{seed:04d}:{i:08d}|".encode() * (MiB // 14 + 1))[:MiB]
    return bytes(out[:size])


@pytest.fixture
def early(mount_factory: MountFactory) -> Mount:
    # a long quiet period: the due upload comes only when the test flushes
    return mount_factory(options=["part_size=5M", "early_parts=on", "writeback_delay=30"])


def stat(mnt: Mount) -> dict[str, int]:
    figures: dict[str, int] = mnt.status()["early_parts"]
    return figures


def wait(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def write_parts(f: int, data: bytes, offset: int = 0) -> None:
    for pos in range(0, len(data), MiB):
        os.pwrite(f, data[pos : pos + MiB], offset + pos)


def server_is(mnt: Mount, key: str, data: bytes) -> None:
    assert mnt.store is not None
    got = mnt.store.get(key)  # flushes the mount first
    assert len(got) == len(data)
    assert got == data
    # an upload given up (truncated below a part, unlinked) is aborted in the background
    wait("no upload left open", lambda: stat(mnt)["open_uploads"] == 0, 10)


def open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def test_parts_go_while_written_and_the_metadata_is_final(early: Mount) -> None:
    path = early.path / "big.bin"
    data = pattern(1, 6 * PART + 123)
    f = open_new(path)
    try:
        write_parts(f, data[: 4 * PART])
        wait("parts sent while the file is open", lambda: stat(early)["sent"] >= 2)
        os.setxattr(path, "user.colour", b"green")
        write_parts(f, data[4 * PART :], 4 * PART)
    finally:
        os.close(f)
    os.chmod(path, 0o640)
    os.utime(path, (OLD, OLD + 7))
    server_is(early, "big.bin", data)
    figures = stat(early)
    assert figures["used"] >= 2, figures
    assert figures["restamps"] == 1, figures
    assert early.store is not None
    size, meta = early.store.head("big.bin")
    assert size == len(data)
    assert (meta["mtime"], meta["mode"], meta["colour"]) == (str(OLD + 7), str(0o100640), "green")
    st = os.stat(path)
    assert (st.st_mtime, st.st_mode & 0o777, st.st_size) == (OLD + 7, 0o640, len(data))


def test_mtime_of_the_last_write_without_setattr(early: Mount) -> None:
    path = early.path / "plain.bin"
    data = pattern(2, 4 * PART)
    f = open_new(path)
    try:
        write_parts(f, data[: 3 * PART])
        wait("a part sent", lambda: stat(early)["sent"] >= 1)
        time.sleep(1.1)  # the mtime at CreateMultipartUpload is not the last write's
        write_parts(f, data[3 * PART :], 3 * PART)
    finally:
        os.close(f)
    mtime = os.stat(path).st_mtime_ns
    server_is(early, "plain.bin", data)
    assert early.store is not None
    meta = early.store.head("plain.bin")[1]
    assert abs(float(meta["mtime"]) * 1e9 - mtime) < 1000, (meta["mtime"], mtime)


def test_a_rewrite_of_a_sent_part_is_sent_again(early: Mount) -> None:
    path = early.path / "rewrite.bin"
    data = bytearray(pattern(3, 5 * PART))
    f = open_new(path)
    try:
        write_parts(f, bytes(data[: 4 * PART]))
        wait("parts sent", lambda: stat(early)["sent"] >= 2)
        patch = b"R" * 3000
        os.pwrite(f, patch, PART + 100)  # inside part 2, sent already
        data[PART + 100 : PART + 100 + len(patch)] = patch
        write_parts(f, bytes(data[4 * PART :]), 4 * PART)
    finally:
        os.close(f)
    server_is(early, "rewrite.bin", bytes(data))


def test_truncate_during_the_early_upload(early: Mount) -> None:
    path = early.path / "cut.bin"
    first = pattern(4, 5 * PART)
    f = open_new(path)
    try:
        write_parts(f, first)
        wait("parts sent", lambda: stat(early)["sent"] >= 3)
        os.ftruncate(f, PART + PART // 2)  # cuts parts 2.. (sent)
        more = pattern(5, 3 * PART)
        write_parts(f, more, PART + PART // 2)
    finally:
        os.close(f)
    server_is(early, "cut.bin", first[: PART + PART // 2] + more)


def test_truncated_below_a_part_goes_in_one_put(early: Mount) -> None:
    path = early.path / "small.bin"
    f = open_new(path)
    try:
        write_parts(f, pattern(12, 4 * PART))
        wait("parts sent", lambda: stat(early)["sent"] >= 2)
        os.ftruncate(f, 1000)
    finally:
        os.close(f)
    server_is(early, "small.bin", pattern(12, 1000))


def test_unlink_during_the_early_upload_leaves_nothing(early: Mount) -> None:
    path = early.path / "gone.bin"
    f = open_new(path)
    try:
        write_parts(f, pattern(6, 4 * PART))
        wait("parts sent", lambda: stat(early)["sent"] >= 2)
        os.unlink(path)
        write_parts(f, pattern(7, PART), 4 * PART)
    finally:
        os.close(f)
    early.flush()
    wait("the upload aborted", lambda: stat(early)["open_uploads"] == 0)
    assert early.store is not None
    assert not early.store.exists("gone.bin")


def test_fsync_while_open_then_more(early: Mount) -> None:
    path = early.path / "synced.bin"
    data = pattern(8, 6 * PART)
    f = open_new(path)
    try:
        write_parts(f, data[: 4 * PART])
        wait("parts sent", lambda: stat(early)["sent"] >= 2)
        os.fsync(f)  # the content so far is on the server when it returns
        assert early.raw_store is not None
        assert early.raw_store.get("synced.bin") == data[: 4 * PART]
        write_parts(f, data[4 * PART :], 4 * PART)
    finally:
        os.close(f)
    server_is(early, "synced.bin", data)


def test_rename_while_written(early: Mount) -> None:
    path = early.path / "tmp.bin"
    data = pattern(9, 4 * PART + 5)
    f = open_new(path)
    try:
        write_parts(f, data[: 3 * PART])
        wait("parts sent", lambda: stat(early)["sent"] >= 1)
        os.rename(path, early.path / "final.bin")
        write_parts(f, data[3 * PART :], 3 * PART)
    finally:
        os.close(f)
    server_is(early, "final.bin", data)
    assert early.store is not None
    assert not early.store.exists("tmp.bin")


def test_an_existing_object_overwritten_with_o_trunc(early: Mount) -> None:
    assert early.raw_store is not None
    early.raw_store.put("over.bin", pattern(10, 3 * PART), {"colour": "old"})
    path = early.path / "over.bin"
    data = pattern(11, 5 * PART + 9)
    before = stat(early)["sent"]
    f = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        write_parts(f, data[: 4 * PART])
        wait("parts sent", lambda: stat(early)["sent"] >= before + 2)
        write_parts(f, data[4 * PART :], 4 * PART)
    finally:
        os.close(f)
    server_is(early, "over.bin", data)
    assert early.store is not None
    meta = early.store.head("over.bin")[1]
    assert abs(float(meta["mtime"]) - os.stat(path).st_mtime) < 1e-6


def test_auto_follows_the_store(mount_factory: MountFactory, store_env: Any) -> None:
    mnt = mount_factory(options=["part_size=5M"])
    assert stat(mnt)["on"] is (store_env.kind != "local")
