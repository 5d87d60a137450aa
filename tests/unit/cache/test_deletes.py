"""Deferred deletes (bucketfs/cache/deletes.py) on the memory backend: batching, the order every
other request keeps with queued deletes, failures, and the journal that survives a crash."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bucketfs.cache.deletes import DeferredDeletes
from bucketfs.cache.index import CacheIndex
from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import NotFound, Transient
from tests.support.harness import BUCKET, CountingBackend, Harness, RunFs


class Store(CountingBackend):
    """Counts batches; `fail` makes the next delete_many calls fail; `hang` never answers."""

    def __init__(self) -> None:
        super().__init__(0.001)
        self.batches: list[int] = []
        self.single = 0
        self.fail = 0
        self.hang = False

    async def delete(self, bucket: str, key: str) -> None:
        self.single += 1
        await super().delete(bucket, key)

    async def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        if self.hang:
            await trio.sleep_forever()
        if self.fail:
            self.fail -= 1
            raise Transient("server down")
        self.batches.append(len(keys))
        await super().delete_many(bucket, keys)


def run(body: Any, store: Store, journal: CacheIndex | None = None) -> None:
    async def main() -> None:
        if BUCKET not in {b.name for b in await store.list_buckets()}:
            await store.create_bucket(BUCKET)
        deletes = DeferredDeletes(store)
        if journal is not None:
            deletes.attach(journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(deletes.run)
            await body(deletes)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_unlinks_leave_in_batches_and_unlink_does_not_wait(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        for i in range(50):
            await h.put(f"d/f{i:02d}", b"x")
        d = await h.fs.lookup(ROOT_INO, "d")
        await h.ls(d.ino)
        h.store.calls.clear()
        for i in range(50):
            await h.fs.unlink(d.ino, f"f{i:02d}")
        assert h.store.calls["delete"] == 0  # nothing sent yet: unlink returned at once
        await h.fs.rmdir(ROOT_INO, "d")  # lists d: waits for the queued deletes first
        assert await h.keys() == []
        assert h.store.calls["delete"] == 0  # files and the marker went in batches

    run_fs(body)


def test_a_write_or_read_of_a_key_waits_for_its_queued_delete() -> None:
    store = Store()

    async def body(deletes: DeferredDeletes) -> None:
        await store.put(BUCKET, "k", b"old")
        await store.put(BUCKET, "dir/a", b"a")
        await deletes.defer_delete(BUCKET, "k")
        await deletes.put(BUCKET, "k", b"new")  # must not be overtaken by the delete
        assert await store.get(BUCKET, "k") == b"new"
        await deletes.defer_delete(BUCKET, "dir/a")
        page = await deletes.list_page(BUCKET, "dir/")
        assert not page.objects
        await deletes.defer_delete(BUCKET, "k")
        with pytest.raises(NotFound):
            await deletes.head(BUCKET, "k")
        assert store.single == 0

    run(body, store)


def test_a_write_waits_for_the_queued_deletes_of_its_entry_and_path() -> None:
    """On a store whose keys are paths in one tree (SeaweedFS), `x/` cannot be made while the
    file `x` is there, nor `x` while `x/` or `x/...` are: such writes wait for those deletes,
    and others do not."""
    store = Store()

    async def body(deletes: DeferredDeletes) -> None:
        for key in ("x", "d/", "d/f", "e", "other"):
            await store.put(BUCKET, key, b"")
        cases = [
            ("x", "x/"),  # rm x; mkdir x
            ("d/f", "d"),  # rm d/f; rmdir d; touch d (the file under it)
            ("e", "e/g"),  # rm e; mkdir -p e/...: a key below a file
        ]
        for deleted, written in cases:
            await deletes.defer_delete(BUCKET, deleted)
            await deletes.put(BUCKET, written, b"")
            assert deleted not in await store.keys(), (deleted, written)
        await deletes.defer_delete(BUCKET, "other")
        await deletes.put(BUCKET, "otherwise", b"")  # not the same entry: no wait
        assert deletes.queued == 1

    run(body, store)


def test_a_failed_batch_is_retried_and_its_waiters_get_the_error() -> None:
    store = Store()

    async def body(deletes: DeferredDeletes) -> None:
        await store.put(BUCKET, "k", b"x")
        store.fail = 1
        await deletes.defer_delete(BUCKET, "k")
        with pytest.raises(Transient):
            await deletes.head(BUCKET, "k")
        await deletes.flush()  # the retry went through
        assert await store.keys(BUCKET) == []
        assert deletes.queued == 0

    run(body, store)


def test_deletes_queued_at_a_crash_are_sent_by_the_next_run(tmp_path: Path) -> None:
    store = Store()
    journal_path = tmp_path / "index.sqlite"

    async def first_life(deletes: DeferredDeletes) -> None:
        await store.put(BUCKET, "gone", b"x")
        await store.put(BUCKET, "done", b"x")
        await deletes.defer_delete(BUCKET, "done")
        await deletes.flush()
        store.hang = True  # the next batch never gets an answer: the daemon dies meanwhile
        await deletes.defer_delete(BUCKET, "gone")
        await trio.sleep(1)

    run(first_life, store, CacheIndex(journal_path))
    assert await_keys(store) == ["gone"]
    store.hang = False
    # another client writes "done" again: a replay must not delete it
    trio.run(store.put, BUCKET, "done", b"newer")
    journal = CacheIndex(journal_path)
    assert journal.pending_deletes() == [(BUCKET, "gone")]

    async def second_life(deletes: DeferredDeletes) -> None:
        await deletes.flush()

    run(second_life, store, journal)
    assert await_keys(store) == ["done"]
    assert journal.pending_deletes() == []


def test_flush_without_run_tries_each_batch_once_and_raises(tmp_path: Path) -> None:
    """A journal replayed by a flush while nobody runs the queue (e.g. a tool): a failing
    server is an error, not a retry loop forever; the key stays queued and journaled."""
    store = Store()
    journal = CacheIndex(tmp_path / "index.sqlite")
    journal.add_delete(BUCKET, "k")

    async def main() -> None:
        await store.create_bucket(BUCKET)
        await store.put(BUCKET, "k", b"x")
        deletes = DeferredDeletes(store)
        deletes.attach(journal)
        store.fail = 1
        with trio.fail_after(5), pytest.raises(Transient):
            await deletes.flush()
        assert deletes.queued == 1
        assert journal.pending_deletes() == [(BUCKET, "k")]
        await deletes.flush()  # the server answers again
        assert deletes.queued == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert await_keys(store) == []
    assert journal.pending_deletes() == []


def await_keys(store: Store) -> list[str]:
    return trio.run(store.keys, BUCKET)


def test_unmount_sends_what_is_queued(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.put("f", b"x")
        await h.fs.unlink(ROOT_INO, "f")
        assert await h.fs.drain() == []
        assert await h.store.keys(BUCKET) == []

    run_fs(body)


def test_a_batch_cancelled_in_flight_is_sent_by_the_next_flush() -> None:
    """`run()` stopped while its DeleteObjects had no answer: the keys go back in the queue,
    so the flush after it (unmount) sends them instead of waiting for that batch forever."""
    store = Store()

    async def main() -> None:
        await store.create_bucket(BUCKET)
        await store.put(BUCKET, "k", b"x")
        deletes = DeferredDeletes(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(deletes.run)
            store.hang = True
            await deletes.defer_delete(BUCKET, "k")
            await trio.sleep(1)  # the batch is in flight and gets no answer
            nursery.cancel_scope.cancel()
        store.hang = False
        with trio.fail_after(5):
            await deletes.flush()
        assert deletes.queued == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert await_keys(store) == []


def test_a_wait_for_a_batch_in_flight_leaves_the_queue_idle_after() -> None:
    """Two requests of a key whose delete is queued, the second while the batch is in flight:
    once it landed the queue is idle. (The second one's wake-up outlived the batch, and the
    sending loop spun at 100% CPU for the rest of the mount: a daemon of the model test did,
    and `git` through a mount ran 5-15 times slower.)"""
    store = Store()

    async def body(deletes: DeferredDeletes) -> None:
        await store.put(BUCKET, "k", b"old")
        await deletes.defer_delete(BUCKET, "k")

        async def ask(after: float) -> None:
            await trio.sleep(after)
            with pytest.raises(NotFound):
                await deletes.head(BUCKET, "k")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, 0.0)
            nursery.start_soon(ask, 0.0005)  # the batch is in flight then (0.001 s per request)
        for _ in range(20):
            await trio.lowlevel.checkpoint()  # the sending loop goes round
        assert deletes.sent_batches == 1
        assert not deletes._wake.is_set()
        await trio.sleep(60)  # and sleeps (a spinning loop never lets the mock clock jump)

    run(body, store)
