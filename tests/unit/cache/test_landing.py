"""The landing rules of a streamed GET (cache/landing.py `Landing`, the `Sink` whose `write`
runs in the thread that received the fill): only blocks the fetch still claims and that are
not present are written; a fill cut short lands its whole blocks only; nothing is committed
before it was written, nor after the file was reset; readers are released per fill; a full
disk stops the receive with the fill kept for the trio thread; another write error is raised
on the trio thread."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bucketfs.cache.cachedfile import CachedFile, Fetch
from bucketfs.cache.landing import Landing
from bucketfs.errors import CacheError

BS = 4096


def _file(nblocks: int) -> CachedFile:
    return CachedFile(
        id=1,
        bucket="b",
        key="k",
        size=nblocks * BS,
        base_key="k",
        base_etag="e1",
        base_size=nblocks * BS,
        meta={},
    )


def _claim(cf: CachedFile, indexes: range) -> dict[int, Fetch]:
    claimed = {i: Fetch() for i in indexes}
    cf.inflight.update(claimed)
    return claimed


def _landing(
    cf: CachedFile, claimed: dict[int, Fetch], fd: int, commits: list[list[int]]
) -> Landing:
    return Landing(
        cf, claimed, fd, 0, len(claimed) * BS,
        block_size=BS,
        current=lambda: cf.base_etag == "e1",
        commit=commits.append,
    )  # fmt: skip


def _fill(byte: int, blocks: float) -> memoryview:
    return memoryview(bytes([byte]) * int(blocks * BS))


def test_only_claimed_blocks_not_present_are_written_then_committed(tmp_path: Path) -> None:
    cf = _file(4)
    claimed = _claim(cf, range(4))
    cf.present.add(1)  # e.g. primed meanwhile (never by a claimed block's owner but us)
    del cf.inflight[2]  # no longer ours
    commits: list[list[int]] = []
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = _landing(cf, claimed, fd, commits)
        assert landing.write(_fill(ord("a"), 2))
        assert commits == []  # written, not committed: that is the trio thread's
        assert not claimed[0].done.is_set()
        landing.landed()
        assert commits == [[0]]
        assert claimed[0].done.is_set()
        assert claimed[1].done.is_set()
        assert landing.reached == 2 * BS
        assert landing.write(_fill(ord("b"), 2))
        landing.landed()
        assert commits == [[0], [3]]
        assert os.pread(fd, BS, 0) == b"a" * BS
        assert os.pread(fd, BS, BS) == bytes(BS)  # present already: not written (a hole)
        assert os.pread(fd, BS, 2 * BS) == bytes(BS)  # not ours: not written
        assert os.pread(fd, BS, 3 * BS) == b"b" * BS
        assert not cf.inflight or all(cf.inflight.get(i) is not claimed[i] for i in claimed)
    finally:
        os.close(fd)


def test_a_fill_cut_short_lands_its_whole_blocks_and_says_stop(tmp_path: Path) -> None:
    cf = _file(4)
    claimed = _claim(cf, range(4))
    commits: list[list[int]] = []
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = _landing(cf, claimed, fd, commits)
        assert not landing.write(_fill(ord("a"), 1.5))  # the connection broke mid-block
        landing.landed()
        assert commits == [[0]]
        assert landing.reached == BS
        assert not claimed[1].done.is_set()  # the rest is fetched again
        assert os.fstat(fd).st_size == BS
    finally:
        os.close(fd)


def test_the_last_fill_lands_whole_up_to_the_end(tmp_path: Path) -> None:
    cf = _file(2)
    claimed = _claim(cf, range(2))
    commits: list[list[int]] = []
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = Landing(
            cf, claimed, fd, 0, BS + 100,
            block_size=BS, current=lambda: True, commit=commits.append,
        )  # fmt: skip
        assert landing.write(_fill(ord("z"), (BS + 100) / BS))
        landing.landed()
        assert commits == [[0, 1]]
        assert landing.reached == BS + 100
    finally:
        os.close(fd)


def test_bytes_of_a_file_reset_meanwhile_are_not_committed(tmp_path: Path) -> None:
    cf = _file(2)
    claimed = _claim(cf, range(2))
    commits: list[list[int]] = []
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = _landing(cf, claimed, fd, commits)
        assert landing.write(_fill(ord("a"), 1))
        cf.base_etag = "e2"  # the object changed on the server (BlockCache._reset_clean)
        landing.landed()
        assert commits == []
        assert claimed[0].done.is_set()  # its readers go on (and fetch it again)
        assert landing.write(_fill(ord("b"), 1))
        assert os.fstat(fd).st_size == BS  # not written once the reset was seen
    finally:
        os.close(fd)


def test_a_full_disk_stops_with_the_fill_kept_for_the_trio_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cf = _file(2)
    claimed = _claim(cf, range(2))
    commits: list[list[int]] = []

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = _landing(cf, claimed, fd, commits)
        monkeypatch.setattr(os, "pwrite", full)
        fill = _fill(ord("a"), 1)
        assert not landing.write(fill)
        landing.landed()
        assert landing.full is not None
        assert bytes(landing.full) == bytes(fill)
        assert commits == []
        assert landing.reached == 0
        assert not claimed[0].done.is_set()  # still claimed: the fetcher lands it
        landing.skip(BS)
        assert landing.reached == landing.offset == BS
    finally:
        monkeypatch.undo()
        os.close(fd)


def test_another_write_error_is_raised_on_the_trio_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cf = _file(2)
    claimed = _claim(cf, range(2))

    def broken(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.EIO, "I/O error")

    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        landing = _landing(cf, claimed, fd, [])
        monkeypatch.setattr(os, "pwrite", broken)
        assert not landing.write(_fill(ord("a"), 1))
        with pytest.raises(CacheError):
            landing.landed()
    finally:
        monkeypatch.undo()
        os.close(fd)
