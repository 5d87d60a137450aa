"""Early parts (bucketfs/cache/early.py): which parts may go, how many at once, what a change
drops, and the whole flow over the memory store (mock clock): parts sent while the file is
open (one at a time), the rest at full speed once released, the due upload using them and
restamping the metadata, and the journal of upload ids."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from bucketfs.cache import early as early_module
from bucketfs.cache.cachedfile import EarlyUpload
from bucketfs.cache.early import WHILE_WRITING, cpu_times, in_flight, ready_parts, spare_cpu
from bucketfs.core.nodes import ROOT_INO
from bucketfs.errors import BackendError
from bucketfs.types import WriteOptions
from tests.support.harness import BUCKET, Harness, RunFs, data_of

MiB = 1 << 20
PART = 5 * MiB
RW = os.O_RDWR


def test_ready_parts_are_full_below_the_writer_and_not_sent() -> None:
    assert ready_parts(3 * PART, PART, {}, set(), slack=MiB) == [1, 2]
    assert ready_parts(3 * PART + MiB, PART, {}, set(), slack=MiB) == [1, 2, 3]
    assert ready_parts(3 * PART, PART, {}, set(), slack=0) == [1, 2, 3]
    assert ready_parts(3 * PART, PART, {1: "e"}, {2}, slack=0) == [3]
    assert ready_parts(PART - 1, PART, {}, set(), slack=0) == []
    assert ready_parts(0, PART, {}, set(), slack=MiB) == []


def test_in_flight_is_bounded_while_written() -> None:
    assert in_flight(True, 8) == WHILE_WRITING == 1
    assert in_flight(False, 8) == 8
    assert in_flight(True, 0) == 0
    assert in_flight(True, 8, spare=False) == 0  # no spare CPU: the writer first
    assert in_flight(False, 8, spare=False) == 8  # released: full speed


def test_spare_cpu_is_half_a_cpu_idle(tmp_path: Path) -> None:
    # (idle incl. iowait, total) jiffies over a window, 2 CPUs: 200 jiffies in all
    assert spare_cpu((0, 0), (50, 200), 2)  # a quarter of both = half a CPU idle
    assert not spare_cpu((0, 0), (49, 200), 2)
    assert spare_cpu((0, 0), (13, 100), 4)
    assert spare_cpu((5, 10), (5, 10), 2)  # no time passed: not held back
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 20 30 400 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert cpu_times(str(stat)) == (450, 531)
    assert cpu_times(str(tmp_path / "none")) is None


@pytest.fixture(autouse=True)
def _always_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's real CPU use is not what these tests are about (`spare_cpu` is)."""
    monkeypatch.setattr(early_module, "cpu_times", lambda: None)


def test_a_change_drops_the_parts_it_touches() -> None:
    up = EarlyUpload(BUCKET, "k", PART, WriteOptions())
    up.sent = {1: "a", 2: "b", 3: "c", 4: "d"}
    up.inflight = {5}
    up.touched(PART - 1, PART + 1)  # the last byte of part 1, the first of part 2
    assert up.sent == {3: "c", 4: "d"}
    up.touched(3 * PART, 3 * PART)  # nothing
    assert up.sent == {3: "c", 4: "d"}
    up.touched(4 * PART + 10, 10**12)  # a truncate inside part 5: part 5 in flight
    assert up.epochs == {5: 1}
    assert up.sent == {3: "c", 4: "d"}
    up.touched(2 * PART, 10**12)
    assert up.sent == {}
    assert up.epochs == {5: 2}


async def sent_at_least(h: Harness, parts: int) -> None:
    """Until `parts` went early (the file still open); the mock clock may race ahead of the
    worker threads that read them, so this waits in steps rather than for a fixed time."""
    for _ in range(1000):
        if h.fs.data.writeback.early.sent >= parts:
            return
        # 10 ms of real time: the mock clock jumps past a `trio.sleep` at once, while the
        # threads reading the parts take real time (1,000 jumps could pass before one ran)
        await trio.to_thread.run_sync(time.sleep, 0.01)
    raise AssertionError(f"{h.fs.data.writeback.early.sent} parts sent early, not {parts}")


def _peaks(h: Harness) -> tuple[list[int], Any]:
    """Count the early parts in flight at once: [peak while open, peak after release]."""
    early = h.fs.data.writeback.early
    peak = [0, 0]
    flying = [0]
    upload_part = h.store.upload_part
    state = {"open": True}

    async def counting(*args: Any, **kw: Any) -> Any:
        flying[0] += 1
        slot = 0 if state["open"] else 1
        peak[slot] = max(peak[slot], flying[0])
        try:
            return await upload_part(*args, **kw)
        finally:
            flying[0] -= 1

    h.store.upload_part = counting  # type: ignore[method-assign]
    assert early.enabled
    return peak, state


def test_parts_go_one_at_a_time_while_open_then_at_full_speed(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        peak, state = _peaks(h)
        data = data_of(12 * PART + 1000)
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, 6 * PART, MiB):
            await h.fs.write(fh, pos, data[pos : pos + MiB])
            await trio.sleep(0.05)  # a writer slower than the store: parts go meanwhile
        await sent_at_least(h, 3)
        for pos in range(6 * PART, len(data), MiB):
            await h.fs.write(fh, pos, data[pos : pos + MiB])
        await h.fs.flush(fh)
        state["open"] = False
        await h.fs.release(fh)
        assert await h.body("big") == data
        assert peak[0] == 1  # one part in flight while the writer was at work
        assert peak[1] > 1  # the rest at full speed in the quiet period
        assert early.used == 12  # every full part went early and was used
        assert early.restamps == 1
        assert h.store.calls["copy"] == 1
        info = await h.head("big")
        node = await h.lookup("big")
        assert float(info.metadata["mtime"]) == node.mtime
        assert h.fs.data.cache.index.pending_uploads() == []

    run_fs(body, latency=0.1, part_size=PART, early_parts="on", writeback_delay=1.0)


def test_a_rewrite_and_a_truncate_send_the_parts_again(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        data = bytearray(data_of(8 * PART))
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, 6 * PART, MiB):
            await h.fs.write(fh, pos, bytes(data[pos : pos + MiB]))
            await trio.sleep(0.05)
        await sent_at_least(h, 2)
        await h.fs.write(fh, 10, b"rewritten")  # part 1, sent already
        data[10:19] = b"rewritten"
        await h.fs.setattr(fh_ino(h, fh), size=5 * PART + 7)  # cuts part 6 (maybe in flight)
        del data[5 * PART + 7 :]
        tail = data_of(2 * PART, seed=9)
        await h.fs.write(fh, len(data), tail)
        data += tail
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.body("big") == bytes(data)
        assert early.used < early.sent  # part 1 (and what the truncate cut) went twice

    run_fs(body, latency=0.1, part_size=PART, early_parts="on", writeback_delay=1.0)


def fh_ino(h: Harness, fh: int) -> int:
    return h.fs.handles.handle(fh).node.ino


def test_off_sends_nothing_early_and_journals_every_upload(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        index = h.fs.data.cache.index
        journaled: list[list[tuple[str, str, str]]] = []
        create = h.store.create_multipart

        async def watching(*args: Any, **kw: Any) -> str:
            upload_id = await create(*args, **kw)
            journaled.append(index.pending_uploads())  # (not yet: journaled after the answer)
            return upload_id

        upload_part = h.store.upload_part

        async def part(bucket: str, key: str, upload_id: str, *args: Any) -> str:
            assert upload_id in [u for u, _b, _k in index.pending_uploads()]
            return await upload_part(bucket, key, upload_id, *args)

        h.store.create_multipart = watching  # type: ignore[method-assign]
        h.store.upload_part = part  # type: ignore[method-assign]
        assert not early.enabled
        data = data_of(4 * PART)
        await h.write_file("big", data)
        assert await h.body("big") == data
        assert early.sent == 0
        assert index.pending_uploads() == []
        assert h.store.calls["copy"] == 0

    run_fs(body, latency=0.01, part_size=PART, writeback_delay=0.0)


def test_auto_follows_the_store_and_learns_a_data_copy(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        assert early.mode == "auto"
        h.store.copy_in_place = None
        assert not early.enabled
        h.store.copy_in_place = True
        assert not early.enabled  # the memory store is not `remote`
        h.fs.backend.remote = True
        assert early.enabled
        copy = h.store.copy

        async def copying_data(*args: Any, **kw: Any) -> Any:
            result = await copy(*args, **kw)
            return type(result)(etag=result.etag + "-new", version_id=result.version_id)

        h.store.copy = copying_data  # type: ignore[method-assign]
        data = data_of(6 * PART)
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, len(data), MiB):
            await h.fs.write(fh, pos, data[pos : pos + MiB])
            await trio.sleep(0.05)
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.body("big") == data
        assert early.restamps == 1
        assert not early.enabled  # the store rewrote the data to restamp: off from now on

    run_fs(body, latency=0.1, part_size=PART, early_parts="auto", writeback_delay=1.0)


def test_auto_holds_parts_back_while_written_without_spare_cpu(
    run_fs: RunFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No idle CPU while the file is open: no part goes (the writer first); once released,
    every part goes, CPU or not."""
    busy = [0]

    def no_idle() -> tuple[int, int]:
        busy[0] += 1000
        return 0, busy[0]  # never an idle jiffy

    monkeypatch.setattr(early_module, "cpu_times", no_idle)

    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        h.fs.backend.remote = True
        assert early.enabled
        data = data_of(6 * PART)
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, len(data), MiB):
            await h.fs.write(fh, pos, data[pos : pos + MiB])
            await trio.sleep(0.05)
        await trio.sleep(1.0)
        assert early.sent == 0
        assert early.held_back > 0
        await h.fs.flush(fh)
        await h.fs.release(fh)
        with trio.move_on_after(2.5):  # well inside the quiet period (3 s), even under load
            while early.sent == 0:  # noqa: ASYNC110 - a counter, no event to wait on
                await trio.sleep(0.05)
        assert early.sent > 0
        assert await h.body("big") == data

    run_fs(body, latency=0.1, part_size=PART, early_parts="auto", writeback_delay=3.0)


def test_the_next_mount_aborts_what_the_journal_holds(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        store, index = h.store, h.fs.data.cache.index
        upload_id = await store.create_multipart(BUCKET, "left", WriteOptions())
        await store.upload_part(BUCKET, "left", upload_id, 1, b"x" * 100)
        index.add_upload(upload_id, BUCKET, "left")
        index.add_upload("no-such-upload", BUCKET, "gone")
        early = h.fs.data.writeback.early
        await early.recover()
        assert index.pending_uploads() == []
        assert upload_id not in store._bucket(BUCKET).uploads

    run_fs(body)


def _hold_part_one(h: Harness, fail: bool) -> list[str]:
    """Part 1's early send is held until the due upload sends the last part (only it does:
    partial); then it lands, or fails (`fail`). Returns what happened, in order."""
    seen: list[str] = []
    go = trio.Event()
    upload_part = h.store.upload_part

    async def holding(bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
        seen.append(f"send {number}")
        if number == 5:
            go.set()
        if number == 1 and "held 1" not in seen:
            seen.append("held 1")
            with trio.move_on_after(30):  # (the old barrier: the due upload waited for it)
                await go.wait()
            seen.append("release 1")
            if fail:
                raise BackendError("part 1 lost")
        return await upload_part(bucket, key, upload_id, number, data)

    h.store.upload_part = holding  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("fail", [False, True])
def test_the_due_upload_sends_beside_early_parts_in_flight(run_fs: RunFs, fail: bool) -> None:
    """The due upload does not wait for the early parts still in flight before it sends the
    others (each slot they left idle was one no part used): the last part goes while part 1
    is held. Part 1 is then used, or (failed once the upload was taken over) sent again by
    the due upload, and the upload is completed, not aborted."""

    async def body(h: Harness) -> None:
        early = h.fs.data.writeback.early
        seen = _hold_part_one(h, fail)
        aborts: list[str] = []
        abort = h.store.abort_multipart

        async def aborting(bucket: str, key: str, upload_id: str) -> None:
            aborts.append(upload_id)
            await abort(bucket, key, upload_id)

        h.store.abort_multipart = aborting  # type: ignore[method-assign]
        data = data_of(4 * PART + 1000)
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, len(data), MiB):
            await h.fs.write(fh, pos, data[pos : pos + MiB])
        await h.fs.flush(fh)
        await h.fs.release(fh)
        assert await h.body("big") == data
        assert seen.index("send 5") < seen.index("release 1")
        assert seen.count("send 1") == (2 if fail else 1)
        assert aborts == []
        assert h.fs.data.cache.index.pending_uploads() == []
        assert early.used == (3 if fail else 4)  # the full parts that went early and stayed

    run_fs(body, latency=0.1, part_size=PART, early_parts="on", writeback_delay=1.0)


def test_a_stale_due_upload_aborts_again_once_early_parts_in_flight_ended(
    run_fs: RunFs,
) -> None:
    """A write during the due upload makes it stale while an early part is still in flight:
    the upload is aborted at once, and again by the early task once that part ended (a part
    that lands after an abort keeps its storage on AWS); the file goes up again, whole."""

    async def body(h: Harness) -> None:
        seen: list[str] = []
        due_running, go = trio.Event(), trio.Event()
        upload_part, abort = h.store.upload_part, h.store.abort_multipart

        async def holding(bucket: str, key: str, upload_id: str, number: int, data: bytes) -> str:
            tag = f"{number} {upload_id}"
            first = f"send {tag}" not in seen
            seen.append(f"send {tag}")
            try:
                if first and number in (1, 5) and not go.is_set():
                    if number == 5:
                        due_running.set()
                    await go.wait()
                return await upload_part(bucket, key, upload_id, number, data)
            finally:
                seen.append(f"ended {tag}")

        async def aborting(bucket: str, key: str, upload_id: str) -> None:
            seen.append(f"abort {upload_id}")
            await abort(bucket, key, upload_id)

        h.store.upload_part = holding  # type: ignore[method-assign]
        h.store.abort_multipart = aborting  # type: ignore[method-assign]
        data = bytearray(data_of(4 * PART + 1000))
        fh, _node = await h.fs.create(ROOT_INO, "big", 0o644, RW | os.O_CREAT, 0, 0)
        for pos in range(0, len(data), MiB):
            await h.fs.write(fh, pos, bytes(data[pos : pos + MiB]))
            if pos == 3 * PART:  # part 1 went early (and is held): real time, a thread reads it
                for _ in range(1000):
                    if any(e.startswith("send 1 ") for e in seen):
                        break
                    await trio.to_thread.run_sync(time.sleep, 0.01)
        assert seen
        assert seen[0].startswith("send 1 ")
        first = seen[0].split()[2]
        await h.fs.flush(fh)
        ino = fh_ino(h, fh)
        await h.fs.release(fh)
        await due_running.wait()  # the due upload sends part 5; early part 1 is held
        fh2, _keep = await h.fs.open(ino, RW)
        await h.fs.write(fh2, PART + 10, b"changed")  # part 2: the due upload is stale now
        data[PART + 10 : PART + 17] = b"changed"
        with trio.move_on_after(5):
            while f"abort {first}" not in seen:  # noqa: ASYNC110 - a log, no event
                await trio.sleep(0.01)
        assert f"ended 1 {first}" not in seen  # aborted at once, part 1 still in flight
        go.set()
        await h.fs.flush(fh2)
        await h.fs.release(fh2)
        assert await h.body("big") == bytes(data)
        assert seen.count(f"abort {first}") == 2
        last_abort = len(seen) - 1 - seen[::-1].index(f"abort {first}")
        assert all(
            i < last_abort for i, e in enumerate(seen) if e.startswith("ended") and first in e
        )
        assert h.fs.data.cache.index.pending_uploads() == []

    run_fs(body, latency=0.1, part_size=PART, early_parts="on", writeback_delay=1.0)
