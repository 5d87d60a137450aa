"""SIGKILL of the daemon at many points of a write workload, then a new daemon on the same
cache directory (docs/cache.md, "Crash recovery").

What must hold after the new daemon has flushed, checked with an independent client:
- every file closed or fsynced before the kill is on the server byte for byte;
- no object is ever a mix of two versions (every byte of version k is the digit k % 10), not
  after the kill, not after the recovery;
- a file deleted while dirty does not come back; one renamed while dirty is only under the new
  name; no stray object (a conflict copy of our own upload) appears.

The points: during writes (file open, not closed), after close with nothing uploaded yet
(writeback_delay=3600; tests/faults/test_crash_quiet.py: during the default quiet period, with
attributes changed meanwhile), during a multipart upload, at random small delays after uploads
started (so sometimes during CompleteMultipartUpload), after several rewrites, and — through a
proxy that withholds the server's answer — after the server stored an upload but before the
daemon learned it did.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.crash import (
    CrashMount,
    CrashMounts,
    HoldingProxy,
    blob,
    describe,
    proxied_env,
    version_of,
    wait_for,
    write_file,
)
from tests.support.servers import SeaweedServer

MiB = 1 << 20


def check_exact(mount: CrashMount, expected: dict[str, bytes]) -> None:
    """The server holds exactly `expected` (names and bytes), nothing else (such as a conflict
    copy of one of our own uploads)."""
    server = mount.server
    for name, data in expected.items():
        got = server.get(name) if server.exists(name) else b"<missing>"
        version_of(got)
        assert got == data, f"{name}: server has {describe(got)}, expected {describe(data)}"
    assert server.keys() == sorted(expected), "objects on the server"


def restart(mount: CrashMount) -> None:
    """A new daemon on the killed one's cache directory."""
    mount.start()


# --- (a) killed in the middle of a workload of writes, closes, fsyncs ----------------------


@dataclass
class Workload:
    """Rewrites a few names again and again, each version whole, in 256 KiB writes; records
    what was closed or fsynced (durable) and what was being written when the daemon died."""

    root: Path
    rng: random.Random
    names: tuple[str, ...] = ("a.bin", "b.bin", "c.bin", "d.txt")
    version: int = 0
    durable: dict[str, bytes] = field(default_factory=dict)
    writing: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (version, size)
    closes: int = 0
    error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                self.one()
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENOENT):
                self.error = exc
        except BaseException as exc:
            self.error = exc

    def one(self) -> None:
        name = self.rng.choice(self.names)
        self.version += 1
        size = self.rng.choice([1, 4000, 300_000, MiB + 5, 3 * MiB - 7])
        data = blob(self.version, size)
        sync = self.rng.random() < 0.25
        self.writing[name] = (self.version, size)
        fd = os.open(self.root / name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            for start in range(0, size, 256 * 1024):
                os.write(fd, data[start : start + 256 * 1024])
            if sync:
                os.fsync(fd)
                self.durable[name] = data  # fsync returned: on the server
        finally:
            os.close(fd)
        self.durable[name] = data  # close returned: the daemon has it
        del self.writing[name]
        self.closes += 1


def test_kill_during_a_write_workload(crash_mounts: CrashMounts) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    mount = crash_mounts()
    expected: dict[str, bytes] = {}
    for round_ in range(3):
        work = Workload(mount.path, rng, version=round_ * 100)
        writer = threading.Thread(target=work.run, daemon=True)
        writer.start()
        # a random point after the first close (on a loaded machine the first 3 MiB file alone
        # can take longer than any fixed delay, and a kill before any close checks little)
        wait_for("the first close", lambda w=work, t=writer: w.closes > 0 or not t.is_alive(), 60)
        time.sleep(rng.uniform(0.0, 1.0))
        mount.kill()
        writer.join(timeout=30)
        assert not writer.is_alive(), "the writer is stuck on the killed mount"
        assert work.error is None, f"workload failed before the kill: {work.error!r}"
        assert work.closes > 0, "nothing was closed before the kill"
        # nothing on the server is a mix, even before the recovery
        for name in mount.server.keys(prefix=""):
            version_of(mount.server.get(name))
        restart(mount)
        mount.flush_all()
        expected.update(work.durable)
        for name in sorted(mount.server.keys()):
            got = mount.server.get(name)
            version = version_of(got)
            if name in work.writing:
                # open when killed: either what was durable, or a prefix of the new version
                new_version, new_size = work.writing[name]
                if got != expected.get(name):
                    assert version in (None, new_version % 10), f"{name}: {describe(got)}"
                    assert len(got) <= new_size, f"{name}: {describe(got)}"
                expected[name] = got
        check_exact(mount, expected)
        # the mount shows what the server has
        for name, data in expected.items():
            assert (mount.path / name).read_bytes() == data, name


# --- (b) closed, nothing uploaded yet; deleted and renamed while dirty -------------------------


def test_kill_after_close_before_any_upload(crash_mounts: CrashMounts) -> None:
    mount = crash_mounts(["writeback_delay=3600"])
    server = mount.server
    for name in ("old-rewritten.txt", "old-deleted.txt", "old-renamed.txt"):
        server.put(name, blob(1, 5000))
    root = mount.path
    expected: dict[str, bytes] = {}
    for i in range(5):
        data = blob(2 + i, 1000 + 700_000 * i)
        write_file(root / f"new{i}.bin", data)
        expected[f"new{i}.bin"] = data
    write_file(root / "before.txt", blob(4, 20_000))
    os.rename(root / "before.txt", root / "after.txt")
    expected["after.txt"] = blob(4, 20_000)
    write_file(root / "old-rewritten.txt", blob(2, 7000))
    expected["old-rewritten.txt"] = blob(2, 7000)
    write_file(root / "old-renamed.txt", blob(2, 9000))
    os.rename(root / "old-renamed.txt", root / "old-renamed-new.txt")  # uploads, then moves
    expected["old-renamed-new.txt"] = blob(2, 9000)
    write_file(root / "synced.txt", blob(5, 3000), fsync=True)
    expected["synced.txt"] = blob(5, 3000)
    # deletes last: a new file created after them would take the deleted one's cache id
    # (test_new_file_after_deleting_a_dirty_one_is_uploaded)
    write_file(root / "gone.txt", blob(3, 10_000))
    os.unlink(root / "gone.txt")
    write_file(root / "old-deleted.txt", blob(2, 8000))
    os.unlink(root / "old-deleted.txt")

    status = mount.status()
    assert status["uploading"] == 0, status
    assert status["dirty_files"] == 7, status  # new0-4, after.txt, old-rewritten.txt
    assert server.get("old-rewritten.txt") == blob(1, 5000)  # not uploaded yet
    assert not server.exists("after.txt")
    mount.kill()
    assert not server.exists("new0.bin")

    restart(mount)  # still writeback_delay=3600: recovered files go up at once all the same
    listed = sorted(os.listdir(root))
    assert listed == sorted(expected), listed
    for name, data in expected.items():
        assert (root / name).stat().st_size == len(data), name
    wait_for("the recovery uploads", lambda: mount.status()["dirty_files"] == 0, 30, 0.1)
    check_exact(mount, expected)


# --- (c) during a multipart upload ---------------------------------------------------------


def test_kill_during_multipart_upload(s3_crash_mounts: CrashMounts) -> None:
    mount = s3_crash_mounts(["part_size=5MiB"])
    server = mount.server
    size = 40 * MiB
    for version in (1, 2):  # a new object, then a whole rewrite of it
        write_file(mount.path / "big.bin", blob(version, size))
        wait_for("the upload to start", lambda: mount.status()["uploading"] > 0, 10, 0.002)
        mount.kill()
        if server.exists("big.bin"):
            on_server = server.get("big.bin")
            assert version_of(on_server) in (version - 1, version), describe(on_server)
            assert len(on_server) == size
        restart(mount)
        mount.flush_all()
        check_exact(mount, {"big.bin": blob(version, size)})


# --- (d) at random small delays after the uploads started ------------------------------------


def test_kill_at_random_points_of_uploads(s3_crash_mounts: CrashMounts) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    # no quiet period: the kills (0 to 0.5 s after the closes) must land during the uploads
    mount = s3_crash_mounts(["part_size=5MiB", "writeback_delay=0"])
    server = mount.server
    sizes = {"multi.bin": 12 * MiB + 3, "single.bin": 2 * MiB, "tiny.txt": 10}
    for version in range(1, 6):
        for name, size in sizes.items():
            write_file(mount.path / name, blob(version, size))
        time.sleep(rng.uniform(0.0, 0.5))
        mount.kill()
        for name in server.keys(prefix=""):
            on_server = server.get(name)
            assert version_of(on_server) in range(1, version + 1), f"{name}: {describe(on_server)}"
            assert len(on_server) == sizes[name], f"{name}: {describe(on_server)}"
        restart(mount)  # recovers the previous version; the next round overwrites it at once
    mount.flush_all()
    check_exact(mount, {name: blob(5, size) for name, size in sizes.items()})


# --- (e) a file rewritten several times, then killed -----------------------------------------


def test_kill_after_several_rewrites(crash_mounts: CrashMounts) -> None:
    mount = crash_mounts()
    for round_, size in enumerate((3 * MiB + 1, 100_000, 2 * MiB)):
        base = round_ * 3
        for version in (base + 1, base + 2, base + 3):
            write_file(mount.path / "r.bin", blob(version, size + version))
        mount.kill()
        if mount.server.exists("r.bin"):
            version_of(mount.server.get("r.bin"))
        restart(mount)
        mount.flush_all()
        check_exact(mount, {"r.bin": blob(base + 3, size + base + 3)})


# --- the window between "the server stored it" and "the daemon knows" --------------------------


@pytest.mark.parametrize(
    ("size", "rewrite", "method", "marker"),
    [
        pytest.param(100_000, False, b"PUT ", b"/w.bin HTTP", id="new-file-put"),
        pytest.param(100_000, True, b"PUT ", b"/w.bin HTTP", id="rewrite-put"),
        # CompleteMultipartUpload (POST ?uploadId=) took effect, its answer was lost
        pytest.param(12 * MiB, True, b"POST ", b"uploadId=", id="multipart-completion"),
    ],
)
def test_kill_after_the_server_stored_an_upload_unacknowledged(
    seaweed: SeaweedServer,
    proxy: HoldingProxy,
    s3_crash_mounts: CrashMounts,
    size: int,
    rewrite: bool,
    method: bytes,
    marker: bytes,
) -> None:
    """The upload of version 2 reaches the server, its answer never reaches the daemon, which
    is killed; the next daemon must end with version 2 under the name and nothing else."""
    env = proxied_env(seaweed, proxy)
    mount = s3_crash_mounts(["part_size=5MiB"], store_env=env)
    server = mount.server
    if rewrite:
        write_file(mount.path / "w.bin", blob(1, size))
        mount.flush_all()
        assert server.get("w.bin") == blob(1, size)
    fd = os.open(mount.path / "w.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, blob(2, size))
        proxy.arm(lambda line: line.startswith(method) and marker in line)
    finally:
        os.close(fd)  # the upload starts

    def stored() -> bool:
        return server.exists("w.bin") and server.get("w.bin") == blob(2, size)

    wait_for("the server to store version 2", stored, 30, 0.05)
    assert proxy.held_bytes > 0, "the answer was not withheld"
    assert mount.upload_state("w.bin") != "clean"
    mount.kill()
    proxy.release()
    restart(mount)
    mount.flush_all()
    check_exact(mount, {"w.bin": blob(2, size)})


# --- deleted while dirty, then a new file -------------------------------------------------------


def test_new_file_after_deleting_a_dirty_one_is_uploaded(crash_mounts: CrashMounts) -> None:
    """A file deleted while its upload waits, then a new file: the new one must be uploaded
    (by a flush now, by the recovery after a kill) and the deleted one must stay deleted."""
    mount = crash_mounts(["writeback_delay=3600"])
    root = mount.path
    write_file(root / "gone.txt", blob(1, 1000))
    os.unlink(root / "gone.txt")
    write_file(root / "next.txt", blob(2, 2000))
    mount.flush_all(timeout=15)
    check_exact(mount, {"next.txt": blob(2, 2000)})
    write_file(root / "gone2.txt", blob(3, 1000))
    os.unlink(root / "gone2.txt")
    write_file(root / "next2.txt", blob(4, 2000))
    mount.kill()
    restart(mount)
    mount.flush_all(timeout=15)
    check_exact(mount, {"next.txt": blob(2, 2000), "next2.txt": blob(4, 2000)})


# --- deletes queued at the kill (bucketfs/cache/deletes.py) ---------------------------------


def test_deletes_queued_at_a_kill_are_sent_by_the_next_mount(crash_mounts: CrashMounts) -> None:
    """Unlinks of a tree and an unlink-then-rewrite of one name, killed right after the last
    unlink (deletes leave after 10 ms, so the last ones are usually still queued): nothing
    deleted comes back, and the rewritten file (uploaded by the recovery) is not deleted by
    the replayed delete of its name."""
    mount = crash_mounts(["writeback_delay=3600"])
    server = mount.server
    for i in range(300):
        server.put(f"tree/d{i % 7}/f{i:03d}", blob(1, 100 + i))
    server.put("keep.txt", blob(2, 500))
    server.put("same.txt", blob(3, 700))
    root = mount.path
    names = [os.path.join(d, f) for d, _, files in os.walk(root / "tree") for f in files]
    assert len(names) == 300
    assert (root / "same.txt").read_bytes() == blob(3, 700)
    os.unlink(root / "same.txt")
    write_file(root / "same.txt", blob(4, 900))  # dirty: its upload waits (writeback_delay)
    for name in names:
        os.unlink(name)
    mount.kill()
    restart(mount)
    mount.flush_all(timeout=30)
    check_exact(mount, {"keep.txt": blob(2, 500), "same.txt": blob(4, 900)})
