"""The FUSE read's reply from a mapping of the data file (cache/datafiles.py `lend`,
cache/fetch.py `Fetcher.read(lend=True)`): the bytes are right, holes are zeros, a range past
the data file's end is read instead, a mapping never outlives a truncation of its file, and a
read past a mapping's end maps the grown file again."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bucketfs.cache.datafiles import MAP_WINDOW, MAX_MAPS, DataFiles
from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import Harness, RunFs, data_of, reader_of

MiB = 1 << 20


def test_a_lent_read_is_a_view_of_the_data_file_with_the_objects_bytes(run_fs: RunFs) -> None:
    size = 3 * MiB + 5
    blob = data_of(size, seed=3)

    async def body(h: Harness) -> None:
        await h.put("big", blob)
        node = await h.fs.lookup(ROOT_INO, "big")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        for offset, length in [(0, 128 << 10), (MiB - 7, MiB), (size - 100, 4096)]:
            got = await h.fs.read(fh, offset, length, lend=True)
            assert isinstance(got, memoryview)
            assert got == blob[offset : offset + length]
            del got  # lent until the next checkpoint only
        plain = await h.fs.read(fh, 0, 4096)
        assert isinstance(plain, bytes)  # nothing lent unless asked for
        assert reader_of(h.fs).data_files.maps >= 1
        await h.fs.release(fh)

    run_fs(body)


def test_a_lent_read_of_a_hole_is_zeros(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, node = await h.fs.create(ROOT_INO, "sparse", 0o644, os.O_RDWR, 0, 0)
        await h.fs.write(fh, 0, b"abc")
        await h.fs.setattr(node.ino, size=MiB)  # the data file is extended: a hole
        got = await h.fs.read(fh, 0, 2 * MiB, lend=True)
        assert got == b"abc" + bytes(MiB - 3)
        await h.fs.release(fh)

    run_fs(body)


def test_a_read_past_the_mapping_maps_the_grown_file_again(tmp_path: Path) -> None:
    files = DataFiles(tmp_path)
    with files.using(1) as fd:
        os.pwrite(fd, b"a" * 4096, 0)
        view = files.lend(1, fd, 0, 4096)
        assert view is not None
        assert view == b"a" * 4096
        del view
        assert files.lend(1, fd, 4096, 8192) is None  # past the file's end: read it instead
        os.pwrite(fd, b"b" * 4096, 4096)
        view = files.lend(1, fd, 4000, 8192)
        assert view == b"a" * 96 + b"b" * 4096
        del view
    assert files.maps == 2
    files.close_all()


def test_a_truncation_drops_the_mapping_before_the_file_shrinks(tmp_path: Path) -> None:
    files = DataFiles(tmp_path)
    with files.using(1) as fd:
        os.pwrite(fd, b"a" * 8192, 0)
        view = files.lend(1, fd, 0, 8192)
        assert view is not None
        del view
        files.truncate(1, fd, 100)
        assert os.fstat(fd).st_size == 100
        assert files.lend(1, fd, 0, 8192) is None  # the old, longer mapping is gone
        view = files.lend(1, fd, 0, 100)
        assert view == b"a" * 100
        del view
    assert files.maps == 2
    files.close_all()


def test_a_view_still_lent_at_a_truncation_is_a_logged_bug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = DataFiles(tmp_path)
    with files.using(1) as fd:
        os.pwrite(fd, b"a" * 8192, 0)
        view = files.lend(1, fd, 0, 4096)
        with caplog.at_level(logging.ERROR, logger="bucketfs.cache.datafiles"):
            files.truncate(1, fd, 8192)  # (same size: touching the view stays safe here)
        assert "shrinks under a lent view" in caplog.text
        assert view is not None
        assert view[:3] == b"aaa"
        del view
    files.close_all()


def test_mappings_cover_a_window_each_and_few_are_kept(tmp_path: Path) -> None:
    """The pages a mapping touched count in the daemon's RSS: a mapping covers one window of
    its file (more only for a read that crosses its end), and at most `MAX_MAPS` are kept."""
    files = DataFiles(tmp_path)
    size = (MAX_MAPS + 2) * MAP_WINDOW
    with files.using(1) as fd:
        os.ftruncate(fd, size)
        os.pwrite(fd, b"z", MAP_WINDOW - 1)
        view = files.lend(1, fd, MAP_WINDOW - 1, MAP_WINDOW + 1)  # crosses the window's end
        assert view == b"z\0"
        del view
        for n in range(MAX_MAPS + 2):
            view = files.lend(1, fd, n * MAP_WINDOW + 10, n * MAP_WINDOW + 20)
            assert view == bytes(10)
            del view
        assert len(files._maps) == MAX_MAPS
        assert all(len(m) == MAP_WINDOW for m in files._maps.values())
        assert max(start for _id, start in files._maps) == (MAX_MAPS + 1) * MAP_WINDOW
    files.close_all()
    assert not files._maps


def test_removing_a_data_file_drops_its_mappings(tmp_path: Path) -> None:
    files = DataFiles(tmp_path)
    for file_id in (1, 2):
        with files.using(file_id) as fd:
            os.pwrite(fd, b"x" * 4096, 0)
            view = files.lend(file_id, fd, 0, 4096)
            assert view is not None
            del view
    files.remove(2)
    assert [file_id for file_id, _start in files._maps] == [1]
    files.close_all()


def test_a_random_reader_gets_a_copy_not_a_new_mapping_per_read(run_fs: RunFs) -> None:
    size = 16 * MiB
    blob = data_of(size, seed=5)

    async def body(h: Harness) -> None:
        await h.put("big", blob)
        node = await h.fs.lookup(ROOT_INO, "big")
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        await h.fs.read(fh, 0, size)  # all of it in the cache
        maps = reader_of(h.fs).data_files.maps
        for offset in (9 * MiB, 3 * MiB + 4096, 13 * MiB, 5 * MiB):  # jumps: a random reader
            got = await h.fs.read(fh, offset, 4096, lend=True)
            assert isinstance(got, bytes)
            assert got == blob[offset : offset + 4096]
        assert reader_of(h.fs).data_files.maps == maps
        await h.fs.release(fh)

    run_fs(body)
