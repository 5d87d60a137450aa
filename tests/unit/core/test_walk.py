"""Readdir while the kernel walks a tree (core/readdir.py `ahead`): a reply waits for the
HEADs of its files and shows each as a node with what its HEAD found; what goes without a
node still (an object gone by its HEAD, a HEAD that does not answer in time)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from bucketfs.core import readdir
from bucketfs.core.nodes import Nameless, Node
from bucketfs.errors import NotFound
from tests.support.harness import Harness, RunFs

SMALL = [f"f{i:02d}" for i in range(20)]


async def _fill(h: Harness) -> Node:
    for name in SMALL:
        await h.put(f"d/{name}", b"s" * 10, mode=str(0o100600))
    await h.put("d/big", b"b" * 5000, mode=str(0o100600))
    d = await h.lookup("d")
    h.fs.namespace.readdir.nameless = True
    return d


def _head_except(
    h: Harness, monkeypatch: pytest.MonkeyPatch, key: str, instead: Callable[[], Awaitable[Any]]
) -> None:
    """The store's HEAD of `key` does `instead` (raise, or never answer)."""
    real = h.store.head

    async def head(bucket: str, asked: str, **kw: Any) -> Any:
        if asked == key:
            h.store.calls["head"] += 1
            return await instead()
        return await real(bucket, asked, **kw)

    monkeypatch.setattr(h.store, "head", head)


async def _shown(h: Harness, d: Node) -> dict[str, Node | Nameless]:
    fh = h.fs.opendir(d.ino)
    try:
        entries = list(await h.fs.readdir(fh, 0))
    finally:
        h.fs.releasedir(fh)
    return {name: item for name, item, _ in entries if name not in (".", "..")}


def test_a_walk_shows_files_as_nodes_with_their_heads_and_sends_each_head_once(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        d = await _fill(h)

        async def gone() -> None:  # another client deleted it after the listing
            raise NotFound("d/f07")

        _head_except(h, monkeypatch, "d/f07", gone)
        h.fs.namespace.readdir.asked()  # a lookup asked about a listed file: a walk
        h.store.calls.clear()
        shown = await _shown(h, d)
        assert isinstance(shown["f07"], Nameless)  # its lookup will say it is gone
        for name in SMALL:
            item = shown[name]
            if name != "f07":
                assert isinstance(item, Node)
                assert item.full
                assert item.mode & 0o777 == 0o600
        big = shown["big"]
        assert isinstance(big, Node)
        assert not big.full  # lookups asked kinds only (rm -rf): no HEAD for a sure kind
        assert h.store.calls["head"] == len(SMALL)
        assert h.fs.namespace.readdir.found_nodes == len(SMALL) - 1

    run_fs(body, attr_timeout=60, dir_timeout=60)


def test_once_getattr_asked_large_files_come_with_their_heads_too(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        d = await _fill(h)
        h.fs.namespace.readdir.asked(attributes=True)  # ls -l, du, tar c
        h.store.calls.clear()
        shown = await _shown(h, d)
        assert all(isinstance(item, Node) and item.full for item in shown.values())
        assert h.store.calls["head"] == len(SMALL) + 1

    run_fs(body, attr_timeout=60, dir_timeout=60)


def test_a_reply_waits_for_a_slow_head_at_most_walk_wait(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        d = await _fill(h)
        _head_except(h, monkeypatch, "d/f03", trio.sleep_forever)
        h.fs.namespace.readdir.asked()
        started = trio.current_time()
        shown = await _shown(h, d)
        assert trio.current_time() - started == pytest.approx(readdir.WALK_WAIT, abs=0.1)
        assert isinstance(shown["f03"], Nameless)
        assert sum(isinstance(shown[name], Node) for name in SMALL) >= len(SMALL) - 1 - 4

    run_fs(body, attr_timeout=60, dir_timeout=60)


def test_a_reply_stops_after_walk_batch_names(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel asks again from where a reply stopped; every name comes with its HEAD."""
    monkeypatch.setattr(readdir, "WALK_BATCH", 6)

    async def body(h: Harness) -> None:
        d = await _fill(h)
        h.fs.namespace.readdir.asked()
        fh = h.fs.opendir(d.ino)
        replies = []
        try:
            offset = 0
            while True:
                entries = list(await h.fs.readdir(fh, offset))
                if not entries:
                    break
                replies.append([name for name, _, _ in entries])
                assert all(isinstance(item, Node) for _, item, _ in entries)
                offset = entries[-1][2]
        finally:
            h.fs.releasedir(fh)
        shown = [name for reply in replies for name in reply]
        assert shown == [".", "..", *sorted([*SMALL, "big"])]
        assert len(replies) >= len(SMALL) // 6

    run_fs(body, attr_timeout=60, dir_timeout=60)
