"""One upload per save, on the memory backend: the upload starts at the release of the last
writable handle, once the file was left alone for `writeback_delay` (the quiet period);
tests/fuse/test_saves.py and tests/fuse/test_quiet.py do it through the kernel."""

from __future__ import annotations

import os

import trio

from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import BUCKET, Harness, RunFs

WO = os.O_WRONLY


async def versions(h: Harness, key: str) -> list[bytes]:
    """Every version of `key`, oldest first."""
    await h.settle()
    page = await h.store.list_versions_page(BUCKET, key, delimiter=None)
    found = [v for v in page.versions if v.key == key and not v.is_delete_marker]
    found.sort(key=lambda v: (v.last_modified, v.version_id or ""))
    return [await h.store.get(BUCKET, key, version_id=v.version_id) for v in found]


def test_a_file_open_twice_for_writing_is_uploaded_at_the_last_release(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh1, node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        fh2, _keep = await h.fs.open(node.ino, WO)
        await h.fs.write(fh1, 0, b"one")
        await h.fs.flush(fh1)
        await h.fs.release(fh1)
        assert await h.keys() == []  # another writer still has it open
        await h.fs.write(fh2, 3, b" two")
        await h.fs.flush(fh2)
        await h.fs.release(fh2)
        assert await h.body("f") == b"one two"
        assert h.store.calls["put"] == 1

    run_fs(body)


def test_each_save_of_a_file_saved_again_at_once_is_a_version(run_fs: RunFs) -> None:
    """Without a quiet period every save is due at its release: the next writable open waits
    for its upload, so each is a version."""

    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        node = await h.write_file("f", b"1")
        for data in (b"2", b"3"):  # no pause: the previous upload may not have started
            fh, _keep = await h.fs.open(node.ino, WO | os.O_TRUNC)
            await h.fs.write(fh, 0, data)
            await h.fs.flush(fh)
            await h.fs.release(fh)
        assert await versions(h, "f") == [b"1", b"2", b"3"]

    run_fs(body, writeback_delay=0.0)


async def save(h: Harness, ino: int, data: bytes) -> None:
    """open(O_TRUNC) + write + flush + release, as `echo data > name` does."""
    fh, _keep = await h.fs.open(ino, WO | os.O_TRUNC)
    await h.fs.write(fh, 0, data)
    await h.fs.flush(fh)
    await h.fs.release(fh)


def test_saves_within_the_quiet_period_are_one_upload(run_fs: RunFs) -> None:
    """A save whose upload has not started when the file is opened for writing again is
    superseded: no wait, no version of its own, and never an empty one."""

    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        node = await h.write_file("f", b"1")
        started = trio.current_time()
        for data in (b"2", b"3"):
            await save(h, node.ino, data)
        assert trio.current_time() - started < 0.5  # no open waited for an upload
        assert h.store.calls["put"] == 0
        assert await versions(h, "f") == [b"3"]
        assert h.store.calls["put"] == 1

    run_fs(body)


def test_a_save_whose_upload_started_is_waited_for(run_fs: RunFs) -> None:
    """Past the quiet period the upload is due: a writable open lets it land first, so that
    save is a version of its own."""

    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        node = await h.write_file("f", b"1")
        await trio.sleep(1.1)  # past the quiet period: the PUT is on its way (latency 1 s)
        assert h.store.calls["put"] == 1
        fh, _keep = await h.fs.open(node.ino, WO | os.O_TRUNC)
        assert h.fs.data.writeback.uploads == 1  # the open returned once the upload landed
        await h.fs.write(fh, 0, b"2")
        await h.fs.release(fh)
        assert await versions(h, "f") == [b"1", b"2"]

    run_fs(body, latency=1.0)


def test_attributes_set_after_close_go_up_with_the_content(run_fs: RunFs) -> None:
    """What tar, rsync and `cp -p` do right after close (times, mode, owner, xattrs) rides
    with the pending upload: one PUT, no server-side copy."""

    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"data")
        await trio.sleep(0.5)  # a moment after close, within the quiet period
        await h.fs.setattr(node.ino, mtime=1_000_000_000.0, atime=1_000_000_000.0)
        await h.fs.setattr(node.ino, mode=0o600)
        await h.fs.setattr(node.ino, uid=1000, gid=1000)
        await h.fs.setxattr(node.ino, "user.colour", b"blue")
        await h.fs.removexattr(node.ino, "user.colour")
        await h.fs.setxattr(node.ino, "user.shape", b"round")
        info = await h.head("f")
        assert (h.store.calls["put"], h.store.calls["copy"]) == (1, 0)
        assert info.metadata["mode"] == str(0o100600)
        assert (info.metadata["uid"], info.metadata["gid"]) == ("1000", "1000")
        assert info.metadata["mtime"].startswith("1000000000")
        assert info.metadata["shape"] == "round"
        assert "colour" not in info.metadata

    run_fs(body)


def test_each_change_restarts_the_quiet_period(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"data")
        for change in range(4):
            await trio.sleep(0.7)
            assert h.store.calls["put"] == 0, change
            if change % 2:
                await h.fs.setattr(node.ino, mtime=1_000_000_000.0 + change)
            else:
                await h.fs.setxattr(node.ino, "user.n", str(change).encode())
        await trio.sleep(0.7)
        assert h.store.calls["put"] == 0
        await trio.sleep(0.5)
        assert h.store.calls["put"] == 1
        assert (await h.head("f")).metadata["n"] == "2"
        assert h.store.calls["copy"] == 0

    run_fs(body)


def test_fsync_uploads_at_once(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh, _node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        await h.fs.write(fh, 0, b"data")
        await h.fs.fsync(fh)
        assert h.store.calls["put"] == 1
        await h.fs.release(fh)
        await h.settle()
        assert h.store.calls["put"] == 1

    run_fs(body, writeback_delay=3600.0)


async def kernel_busy(h: Harness, seconds: float) -> None:
    """A program keeping the kernel busy: a request every 10 ms (as the FUSE adapter tells
    `BucketFS.foreground`), for `seconds` of the mock clock."""
    until = trio.current_time() + seconds
    while trio.current_time() < until:
        h.fs.foreground.begin("write")
        await trio.sleep(0.005)
        h.fs.foreground.end()
        await trio.sleep(0.005)


def test_an_upload_waits_for_the_kernels_requests_to_pause_at_most_upload_defer(
    run_fs: RunFs,
) -> None:
    """Uploads yield to a burst of kernel requests (they run on the thread that answers
    them): due after the quiet period, a file goes up once the requests pause, or after
    `upload_defer` seconds of them; someone waiting for it (fsync, flush) does not wait."""

    async def body(h: Harness) -> None:
        await h.write_file("a", b"1")  # due 1 s from now
        await kernel_busy(h, 2.5)
        assert await h.store.keys(BUCKET) == []  # due, but the kernel is busy
        await trio.sleep(0.2)  # a pause
        assert await h.store.keys(BUCKET) == ["a"]

        await h.write_file("b", b"2")  # due at 1 s, then 2 s more at most
        await kernel_busy(h, 2.9)
        assert await h.store.keys(BUCKET) == ["a"]
        await kernel_busy(h, 0.3)
        assert await h.store.keys(BUCKET) == ["a", "b"]  # went while requests kept coming

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel_busy, h, 5.0)
            fh, _node = await h.fs.create(ROOT_INO, "c", 0o644, WO | os.O_CREAT, 0, 0)
            await h.fs.write(fh, 0, b"3")
            started = trio.current_time()
            await h.fs.fsync(fh)  # never deferred
            assert trio.current_time() - started < 0.5
            assert await h.store.keys(BUCKET) == ["a", "b", "c"]
            await h.fs.release(fh)

    run_fs(body, writeback_delay=1.0, upload_defer=2.0)


def test_no_quiet_period_means_no_waiting_for_the_kernel(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel_busy, h, 2.0)
            await h.write_file("a", b"1")
            await trio.sleep(0.1)
            assert await h.store.keys(BUCKET) == ["a"]

    run_fs(body, writeback_delay=0.0, upload_defer=5.0)


def test_a_burst_of_releases_leaves_no_task_per_file(run_fs: RunFs) -> None:
    """Files in their quiet period wait in one queue, not one task (with its timer) each;
    they go up once it ended, in the order they were released."""

    async def body(h: Harness) -> None:
        writeback = h.fs.data.writeback
        assert writeback._nursery is not None
        before = len(writeback._nursery.child_tasks)
        for i in range(50):
            await h.write_file(f"f{i:02d}", b"x")
        assert len(writeback._nursery.child_tasks) == before
        assert h.store.calls["put"] == 0
        await trio.sleep(1.5)
        assert h.store.calls["put"] == 50
        assert await h.keys() == [f"f{i:02d}" for i in range(50)]

    run_fs(body, writeback_delay=1.0)


def test_a_file_changed_after_its_release_holds_back_no_other(run_fs: RunFs) -> None:
    """The first file in the queue whose quiet period moved on goes to the back: the files
    released after it are uploaded when theirs ends."""

    async def body(h: Harness) -> None:
        a = await h.write_file("a", b"1")
        await h.write_file("b", b"2")
        for n in range(6):  # `a` is changed every 0.5 s: its quiet period never ends
            await trio.sleep(0.5)
            await h.fs.setxattr(a.ino, "user.n", str(n).encode())
        assert await h.store.keys(BUCKET) == ["b"]
        await trio.sleep(1.1)
        assert await h.store.keys(BUCKET) == ["a", "b"]
        assert (await h.store.head(BUCKET, "a")).metadata["n"] == "5"

    run_fs(body, writeback_delay=1.0)


def test_a_file_in_its_quiet_period_is_uploaded_at_once_when_waited_for(
    run_fs: RunFs,
) -> None:
    async def body(h: Harness) -> None:
        node = await h.write_file("f", b"data")
        await trio.sleep(1.0)
        assert h.store.calls["put"] == 0
        fh, _keep = await h.fs.open(node.ino, os.O_RDONLY)
        started = trio.current_time()
        await h.fs.fsync(fh)
        assert trio.current_time() - started < 0.5
        assert h.store.calls["put"] == 1
        await h.fs.release(fh)

    run_fs(body, writeback_delay=3600.0)
