"""Listings ahead of a walk (core/earlylist.py): while the kernel walks a tree, the directory
it reads next is listed during the read of the one before, and its readdir takes that
listing instead of sending a second LIST; never when this mount changed a directory since,
and never past `EARLY_FOR`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bucketfs.core import earlylist
from bucketfs.core.nodes import Node
from bucketfs.errors import Transient
from tests.support.harness import Harness, RunFs

DIRS = ["a", "b", "c"]


async def _tree(h: Harness) -> Node:
    for d in DIRS:
        for i in range(3):
            await h.put(f"top/{d}/f{i}", b"x", mode=str(0o100600))
        await h.put(f"top/{d}/sub/g", b"y", mode=str(0o100600))
    top = await h.lookup("top")
    h.fs.namespace.readdir.nameless = True
    return top


def _count_lists(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Listings of a directory sent from now on, by prefix (not the one-key LISTs a lookup
    sends to ask whether a name is also a directory)."""
    lists: Counter[str] = Counter()
    real = h.store.list_page

    async def list_page(bucket: str, prefix: str, *args: Any, **kw: Any) -> Any:
        if kw.get("max_keys") != 1:
            lists[prefix] += 1
        return await real(bucket, prefix, *args, **kw)

    monkeypatch.setattr(h.store, "list_page", list_page)
    return lists


async def _read(h: Harness, path: str) -> dict[str, Node]:
    return await h.ls((await h.lookup(path)).ino)


def test_a_walk_lists_the_next_directory_once_and_ahead(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        top = await _tree(h)
        lists = _count_lists(h, monkeypatch)
        early = h.fs.namespace.readdir.early
        h.fs.namespace.readdir.asked()  # the kernel asks about listed files: a walk
        await h.ls(top.ino)  # its first subdirectory is guessed: top/a/
        assert early.sent == 1
        shown = await _read(h, "top/a")  # then a's first subdirectory: top/a/sub/
        assert set(shown) == {"f0", "f1", "f2", "sub"}
        assert early.sent == 2
        await _read(h, "top/a/sub")  # no subdirectory, its parent's last: top/b/
        await _read(h, "top/b")
        assert early.used == 3
        assert [lists["top/a/"], lists["top/a/sub/"], lists["top/b/"]] == [1, 1, 1]
        await _read(h, "top/b/sub")  # -> top/c/
        await _read(h, "top/c")  # -> top/c/sub/
        sent = early.sent
        await _read(h, "top/c/sub")  # the last of the last: nothing known follows it
        assert early.sent == sent
        assert early.used == 6

    run_fs(body, attr_timeout=60, dir_timeout=0)


def test_not_walking_lists_nothing_ahead(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        top = await _tree(h)
        await h.ls(top.ino)  # `find`, plain `ls`: the kernel asked about no listed file
        assert h.fs.namespace.readdir.early.sent == 0

    run_fs(body, attr_timeout=60, dir_timeout=0)


def test_a_change_through_this_mount_after_the_early_listing_is_seen(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        top = await _tree(h)
        lists = _count_lists(h, monkeypatch)
        h.fs.namespace.readdir.asked()
        await h.ls(top.ino)  # top/a/ listed ahead
        a = await h.lookup("top/a")
        await h.write_file("new", b"n", parent=a.ino)  # after that listing was sent
        shown = await h.ls(a.ino)
        assert "new" in shown
        assert lists["top/a/"] == 2  # listed again
        assert h.fs.namespace.readdir.early.used == 0

    run_fs(body, attr_timeout=60, dir_timeout=0)


def test_an_early_listing_serves_early_for_at_most(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(earlylist, "EARLY_FOR", 0.0)

    async def body(h: Harness) -> None:
        top = await _tree(h)
        lists = _count_lists(h, monkeypatch)
        h.fs.namespace.readdir.asked()
        await h.ls(top.ino)
        await _read(h, "top/a")
        assert lists["top/a/"] == 2
        assert h.fs.namespace.readdir.early.used == 0

    run_fs(body, attr_timeout=60, dir_timeout=0)


def test_a_failed_early_listing_is_listed_again(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        top = await _tree(h)
        real = h.store.list_page
        failed: list[str] = []

        async def list_page(bucket: str, prefix: str, *args: Any, **kw: Any) -> Any:
            if prefix == "top/a/" and not failed:
                failed.append(prefix)
                raise Transient("the server was away")
            return await real(bucket, prefix, *args, **kw)

        monkeypatch.setattr(h.store, "list_page", list_page)
        h.fs.namespace.readdir.asked()
        await h.ls(top.ino)
        shown = await _read(h, "top/a")
        assert failed == ["top/a/"]
        assert set(shown) == {"f0", "f1", "f2", "sub"}
        assert h.fs.namespace.readdir.early.used == 0

    run_fs(body, attr_timeout=60, dir_timeout=0)
