"""The server goes away while the mount works: stopped (SIGSTOP: it keeps its connections and
its data but answers nothing) for 30 s in the middle of uploads, killed while the mount holds
dirty data and is unmounted, and an answer of the server lost on the way.

What must hold: nothing closed is lost (all on the server once it is back and the mount has
flushed), no process hangs (every wait here is bounded), a read of data that is not cached fails
with EIO in bounded time instead of hanging, `bucketfs umount` gives up in bounded time and the
next mount on the same cache directory uploads what was left.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.crash import (
    _READ_ERRNO,
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
from tests.support.helpers import REPO, s3_store_env
from tests.support.servers import SeaweedServer

MiB = 1 << 20
OUTAGE_SECONDS = 30.0
#: how long a read of uncached data may take to fail while the server does not answer
READ_FAILS_WITHIN = 30.0


@pytest.fixture
def own_seaweed() -> Iterator[SeaweedServer]:
    """A SeaweedFS this test may stop and kill (the session's one is shared)."""
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        assert server.proc is not None
        if server.proc.poll() is None:  # its data is not needed: no 10 s SIGTERM grace
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=30)
        server.stop()


def check_files(mount: CrashMount, expected: dict[str, bytes]) -> None:
    server = mount.server
    for name, data in expected.items():
        got = server.get(name) if server.exists(name) else b"<missing>"
        version_of(got)
        assert got == data, f"{name}: server has {describe(got)}, expected {describe(data)}"


def test_server_stopped_for_30s_in_the_middle_of_uploads(
    own_seaweed: SeaweedServer, tmp_path: Path
) -> None:
    mounts = CrashMounts(s3_store_env(own_seaweed), tmp_path / "m")
    reader: subprocess.Popen[bytes] | None = None
    fds: dict[str, int] = {}
    try:
        mounts.fail_on_tracebacks = True
        mount = mounts(["retry_timeout=3", "part_size=5MiB"])
        mount.server.put("cold.bin", blob(7, 3 * MiB))  # never read through the mount yet
        # created now (a new name is looked up on the server), written and closed in the outage
        during = {f"during{i}.txt": blob(5 + i, 4000 + i) for i in range(3)}
        for name in during:
            fds[name] = os.open(mount.path / name, os.O_CREAT | os.O_WRONLY)
        expected: dict[str, bytes] = {}
        for i in range(8):
            expected[f"small{i}.txt"] = blob(3 + i, 1000 * (i + 1))
        for i in range(2):
            expected[f"big{i}.bin"] = blob(1 + i, 24 * MiB + i)
        for name, data in expected.items():
            write_file(mount.path / name, data)
        wait_for("uploads in flight", lambda: mount.status()["uploading"] > 0, 10, 0.002)
        assert own_seaweed.proc is not None
        os.killpg(own_seaweed.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # the control channel needs no server: it answers at once
            status = mount.status()
            assert status["dirty_files"] > 0, status
            # a read of data that is not cached: must fail (EIO) in bounded time
            reader = subprocess.Popen(
                [sys.executable, "-c", _READ_ERRNO, str(mount.path / "cold.bin")],
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            read_started = time.monotonic()
            while reader.poll() is None and time.monotonic() - read_started < READ_FAILS_WITHIN:
                time.sleep(0.05)
            read_rc = reader.poll()
            read_took = time.monotonic() - read_started
            # written and closed during the outage: close does not wait for the server
            started = time.monotonic()
            for name, data in during.items():
                os.write(fds[name], data)
                os.close(fds.pop(name))
            assert time.monotonic() - started < 5, "close waited for the stopped server"
            expected.update(during)
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        finally:
            os.killpg(own_seaweed.proc.pid, signal.SIGCONT)
        mount.flush_all(timeout=120)
        check_files(mount, expected)
        assert mount.status()["dirty_files"] == 0
        assert (mount.path / "cold.bin").read_bytes() == blob(7, 3 * MiB)
        assert mount.proc is not None
        assert mount.proc.poll() is None, "the daemon died"

        # the read during the outage
        assert read_rc is not None, (
            f"a read of uncached data was still blocked {read_took:.0f}s into the outage "
            f"(mount option retry_timeout=3)"
        )
        assert read_rc == 100 + errno.EIO, f"read ended with {read_rc} (100 + errno expected)"
    finally:
        for fd in fds.values():
            os.close(fd)
        if reader is not None:
            try:
                reader.wait(timeout=90)
            except subprocess.TimeoutExpired:
                for m in mounts.mounts:
                    m.kill_hard()
                reader.wait(timeout=30)
            assert reader.stderr is not None
            reader.stderr.close()
        mounts.close()


def _restart_same_data(server: SeaweedServer) -> None:
    """Start the killed server again on its data directory and S3 port."""
    server.start()


def test_umount_while_the_server_is_down_then_the_next_mount_uploads(
    own_seaweed: SeaweedServer, tmp_path: Path
) -> None:
    mounts = CrashMounts(s3_store_env(own_seaweed), tmp_path / "m")
    try:
        mounts.fail_on_tracebacks = True
        mount = mounts(["retry_timeout=3", "writeback_delay=3600"])
        expected = {f"f{i}.bin": blob(i, 100_000 * (i + 1)) for i in range(5)}
        for name, data in expected.items():
            write_file(mount.path / name, data)
        assert mount.status()["dirty_files"] == len(expected)
        assert own_seaweed.proc is not None
        os.killpg(own_seaweed.proc.pid, signal.SIGKILL)
        own_seaweed.proc.wait(timeout=30)

        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bucketfs", "umount", str(mount.path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**mount.env, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            check=False,
        )
        took = time.monotonic() - started
        assert mount.proc is not None
        rc = mount.proc.wait(timeout=30)
        mount.proc = None
        assert took < 60, f"bucketfs umount took {took:.0f}s with the server down"
        # it says that it could not upload everything, and where the data stays
        assert done.returncode == 1, done
        assert "uploaded by the next mount" in done.stderr, done.stderr
        assert rc == 0, f"daemon exited with {rc}"
        log = mount.log.read_text(errors="replace")
        assert "not uploaded" in log, log[-3000:]

        _restart_same_data(own_seaweed)
        mount.start()  # the same cache directory: uploads what was left, before it is visible
        wait_for("the recovery uploads", lambda: mount.status()["dirty_files"] == 0, 30, 0.1)
        check_files(mount, expected)
        assert mount.server.keys() == sorted(expected)
    finally:
        mounts.close()


def test_a_late_answer_then_a_rewrite_keeps_the_newest_under_the_name(
    seaweed: SeaweedServer, proxy: HoldingProxy, tmp_path: Path
) -> None:
    """The server stored version 2 but its answer is slow; version 3 is written meanwhile.
    Version 3 is the file: it must end under the name, with no other object."""
    mounts = CrashMounts(proxied_env(seaweed, proxy), tmp_path / "m")
    try:
        mount = mounts(["retry_timeout=5"])
        size = 200_000
        write_file(mount.path / "w.bin", blob(1, size))
        mount.flush_all(timeout=30)
        fd = os.open(mount.path / "w.bin", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, blob(2, size))
            proxy.arm(lambda line: line.startswith(b"PUT ") and b"/w.bin HTTP" in line)
        finally:
            os.close(fd)
        wait_for(
            "the server to store version 2",
            lambda: mount.server.get("w.bin") == blob(2, size),
            30,
            0.05,
        )
        write_file(mount.path / "w.bin", blob(3, size))  # the upload of version 2 is stale
        time.sleep(1)
        proxy.release()  # the answer arrives, late
        mount.flush_all(timeout=60)
        check_files(mount, {"w.bin": blob(3, size)})
        assert mount.server.keys() == ["w.bin"]
    finally:
        mounts.close()


def test_an_answer_lost_by_a_reset_is_not_taken_for_a_conflict(
    seaweed: SeaweedServer, proxy: HoldingProxy, tmp_path: Path
) -> None:
    """The server stored the upload, the connection broke before its answer arrived: the
    retry meets our own object. It must not be taken for another client's change (no conflict
    copy), for a new file as for a rewrite."""
    mounts = CrashMounts(proxied_env(seaweed, proxy), tmp_path / "m")
    try:
        mount = mounts(["retry_timeout=5"])
        size = 200_000
        for version in (1, 2):
            proxy.arm(lambda line: line.startswith(b"PUT ") and b"/w.bin HTTP" in line, reset=True)
            write_file(mount.path / "w.bin", blob(version, size))
            mount.flush_all(timeout=30)
            assert proxy.held_bytes > 0, "no answer was dropped"
            check_files(mount, {"w.bin": blob(version, size)})
            assert mount.server.keys() == ["w.bin"]
    finally:
        mounts.close()


def test_status_counts_the_deletes_whose_answer_has_not_come(
    seaweed: SeaweedServer, proxy: HoldingProxy, tmp_path: Path
) -> None:
    """Unlinks return before the server confirms their batch: `bucketfs status` shows them as
    queued while DeleteObjects has no answer, and not once the answer came."""
    mounts = CrashMounts(proxied_env(seaweed, proxy), tmp_path / "m")
    try:
        mount = mounts([])
        for i in range(20):
            mount.server.put(f"gone/f{i:02d}", blob(i, 100))
        names = sorted(os.listdir(mount.path / "gone"))
        assert len(names) == 20
        proxy.arm(lambda line: line.startswith(b"POST ") and b"?delete" in line)
        for name in names:
            os.unlink(mount.path / "gone" / name)  # returns at once: the deletes are queued
        wait_for("the DeleteObjects answer to be withheld", lambda: proxy.held_bytes > 0, 30, 0.05)
        out = subprocess.run(
            [sys.executable, "-m", "bucketfs", "status", str(mount.path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "deletes queued: 20" in out.stdout, out.stdout
        proxy.release()
        mount.flush_all(timeout=30)
        assert mount.status()["deletes_queued"] == 0
        assert mount.server.keys("gone/") == []
    finally:
        mounts.close()


SIZE = 3 << 20


def test_the_task_dump_names_what_a_stuck_read_waits_for(
    seaweed: SeaweedServer, proxy: HoldingProxy, tmp_path: Path
) -> None:
    """SIGUSR1 makes the daemon log every task's await chain (bucketfs/fuse/taskdump.py; the test
    harness asks for it before it takes down a daemon that hangs): a read whose GET gets no
    answer shows as the FUSE read waiting for the fetch, and the fetch waiting in the S3
    backend's ranged GET into the fetch's buffer (`ranged_body`). The mount
    keeps serving after the dump."""
    mounts = CrashMounts(proxied_env(seaweed, proxy), tmp_path / "m")
    try:
        mount = mounts([])
        # larger than a block: an open of a smaller file may send the GET itself (one GET
        # for its attributes and body, `Backend.head_and_get`), and the read would wait for no GET
        mount.server.put("cold.bin", blob(1, SIZE))
        proxy.arm(lambda line: line.startswith(b"GET ") and b"/cold.bin" in line)
        reader = subprocess.Popen(
            [sys.executable, "-c", _READ_ERRNO, str(mount.path / "cold.bin")],
            start_new_session=True,
        )
        try:
            wait_for("the GET answer to be withheld", lambda: proxy.held_bytes > 0, 30, 0.05)
            mount.dump_tasks()
            dump = mount.log.read_text(errors="replace").split("task dump (SIGUSR1)")[-1]
            tasks = dump.splitlines()
            assert any(
                t.startswith("request: fuse/ops.py") and " read > " in t and "materialize" in t
                for t in tasks
            ), dump
            assert any(
                "_fetch" in t and "http.py" in t and "ranged_body" in t and "s3/backend.py" in t
                for t in tasks
            ), dump
            assert any(t.startswith("thread ") for t in tasks), dump
            proxy.release()
            assert reader.wait(timeout=30) == 0
        finally:
            proxy.release()
            if reader.poll() is None:
                reader.kill()
                mount.kill_hard()
            reader.wait(timeout=30)
        assert (mount.path / "cold.bin").read_bytes() == blob(1, SIZE)
    finally:
        mounts.close()
