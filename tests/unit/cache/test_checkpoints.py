"""The cache index's WAL is checkpointed by a worker thread, not inside commits
(cache/checkpoints.py): the serving connection's auto-checkpoint is off while the task runs,
PASSIVE checkpoints follow commits, an idle index gets its WAL emptied, a thread that cannot
keep up leaves the WAL bounded (a commit checkpoints then), and a kill at any point loses
nothing committed. On the real clock with the thread (the unit tests' autojump clock runs
checkpoints inline: tests/unit/conftest.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import bucketfs
from bucketfs.cache import checkpoints
from bucketfs.cache.checkpoints import Checkpoints
from bucketfs.cache.index import CacheIndex
from tests.support.harness import Harness, RunFs

META = {"metadata": {"mode": "33188"}}


@pytest.fixture(autouse=True)
def _threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "THREADED", True)
    monkeypatch.setattr(checkpoints, "EVERY", 16)
    monkeypatch.setattr(checkpoints, "LIMIT", 64)
    monkeypatch.setattr(checkpoints, "IDLE", 0.2)


def _record(index: CacheIndex, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        index.add_new(index.new_id(), "b", f"k{i}", 1000, META, [0])


def _autocheckpoint(index: CacheIndex) -> int:
    return int(index.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now, as another connection's checkpoint reports them."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        db.close()


def test_commits_do_not_checkpoint_while_the_task_runs_the_thread_does(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = CacheIndex(path)
    assert _autocheckpoint(index) == 1000  # SQLite's own, until the task runs

    async def main() -> None:
        cp = Checkpoints(index)
        async with trio.open_nursery() as nursery:
            await nursery.start(cp.run)
            assert _autocheckpoint(index) == 0
            for i in range(4):
                _record(index, checkpoints.EVERY, first=i * checkpoints.EVERY)
                with trio.fail_after(10):
                    while cp.passes <= i:  # noqa: ASYNC110 - a thread moves it
                        await trio.sleep(0.01)
            assert cp.fallbacks == 0
            # idle: the WAL is copied and emptied
            with trio.fail_after(10):
                while cp.truncates == 0:  # noqa: ASYNC110 - a thread moves it
                    await trio.sleep(0.05)
            assert (tmp_path / "index.sqlite-wal").stat().st_size == 0
            nursery.cancel_scope.cancel()
        assert _autocheckpoint(index) == 1000  # back to SQLite's own once the task ended
        assert cp._db is None  # its connection closed before the index's

    trio.run(main)
    assert len(index.dirty_files()) == 4 * checkpoints.EVERY
    index.close()
    assert not (tmp_path / "index.sqlite-wal").exists()  # the last close checkpoints


def test_a_thread_that_cannot_keep_up_leaves_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits landing during every pass (here: passes that never catch up) would let the WAL
    grow without end: past LIMIT commits, one commit checkpoints and the WAL starts over."""
    monkeypatch.setattr(Checkpoints, "_passive", lambda self: False)
    path = tmp_path / "index.sqlite"
    index = CacheIndex(path)

    async def main() -> None:
        cp = Checkpoints(index)
        async with trio.open_nursery() as nursery:
            await nursery.start(cp.run)
            _record(index, 5 * checkpoints.LIMIT)
            assert cp.fallbacks == 5
            # what is in the WAL is at most LIMIT commits' worth (each commit: a few pages)
            assert _wal_frames(path) < 10 * checkpoints.LIMIT
            nursery.cancel_scope.cancel()

    trio.run(main)
    index.close()


def test_a_failing_checkpoint_is_tried_again_limit_commits_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at every commit (each failure logs a warning)."""
    monkeypatch.setattr(Checkpoints, "_passive", lambda self: False)
    tries: list[str] = []

    def failing(self: CacheIndex, mode: str) -> None:
        tries.append(mode)

    monkeypatch.setattr(CacheIndex, "checkpoint", failing)
    index = CacheIndex(tmp_path / "index.sqlite")

    async def main() -> None:
        cp = Checkpoints(index)
        async with trio.open_nursery() as nursery:
            await nursery.start(cp.run)
            _record(index, 3 * checkpoints.LIMIT)
            nursery.cancel_scope.cancel()

    trio.run(main)
    index.close()
    assert tries == ["PASSIVE"] * 3


def test_the_filesystem_runs_the_checkpoints(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "THREADED", False)  # the autojump clock: inline

    async def body(h: Harness) -> None:
        await h.write_file("f", b"x")
        assert _autocheckpoint(h.fs.data.cache.index) == 0

    run_fs(body)


CHILD = """
import sys, trio
from pathlib import Path
from bucketfs.cache import checkpoints
from bucketfs.cache.checkpoints import Checkpoints
from bucketfs.cache.index import CacheIndex
checkpoints.EVERY = 8
checkpoints.IDLE = 0.01

async def main():
    index = CacheIndex(Path(sys.argv[1]))
    cp = Checkpoints(index)
    async with trio.open_nursery() as nursery:
        await nursery.start(cp.run)
        i = 0
        while True:
            index.add_new(index.new_id(), "b", f"k{i}", 10, {}, [0])
            print(i, flush=True)  # committed: a kill from now on must not lose it
            i += 1
            await trio.sleep(0.0005 if i % 50 else 0.05)  # idle now and then: TRUNCATEs too

trio.run(main)
"""


@pytest.mark.parametrize("after", [5, 40, 200, 600])
def test_a_kill_at_any_point_loses_no_commit(tmp_path: Path, after: int) -> None:
    path = tmp_path / "index.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(bucketfs.__file__).parent.parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    last = -1
    with child, child.stdout:
        for line in child.stdout:
            last = int(line)
            if last >= after:
                break
        child.send_signal(signal.SIGKILL)
    assert last == after
    index = CacheIndex(path)
    keys = {row.key for row in index.dirty_files()}
    index.close()
    assert {f"k{i}" for i in range(last + 1)} <= keys
