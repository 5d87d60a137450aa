"""Bad things after the mount is live: a full cache disk, a server that goes away, objects
changed behind the mount's back. Each must give a clear errno, lose nothing that was already
on the server, and leave the daemon serving.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import Mount, MountFactory, StoreEnv, mount_factory_for, s3_store_env
from tests.support.servers import SeaweedServer


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs to put the cache directory on, so that it fills up."""
    where = tmp_path / "tiny"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def errno_of(fn: Callable[[], object]) -> int:
    """The errno `fn()` failed with (the test fails if it did not)."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{fn} did not fail")


def _fill(path: Path) -> int:
    """Write 16 MiB into a 4 MiB cache disk; the errno of the write that failed (0: none)."""
    chunk = os.urandom(256 * 1024)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for _ in range(64):
            os.write(fd, chunk)
    except OSError as exc:
        return exc.errno or 0
    finally:
        with contextlib.suppress(OSError):  # close may report the full disk too
            os.close(fd)
    return 0


def _mount_with_workdir(store_env: StoreEnv, workdir: Path, mnt_path: Path) -> Mount:
    bucket = store_env.new_bucket()
    mount = Mount(
        source=store_env.source(bucket),
        path=mnt_path,
        options=list(store_env.options),
        env=store_env.env,
        workdir=workdir,
        raw_store=store_env.client(bucket),
        bucket=bucket,
    )
    mount.start()
    return mount


def test_full_cache_disk_gives_enospc_and_keeps_data(
    store_env: StoreEnv, tiny_tmpfs: Path, tmp_path: Path
) -> None:
    mount = _mount_with_workdir(store_env, tiny_tmpfs / "work", tmp_path / "mnt")
    assert mount.store is not None
    try:
        (mount.path / "kept.txt").write_bytes(b"already on the server")
        assert _fill(mount.path / "big.bin") == errno.ENOSPC
        # what was on the server is untouched (read without flushing: with the cache disk
        # full, the mount cannot record upload progress either), and the mount goes on serving
        assert mount.raw_store is not None
        deadline = time.monotonic() + 30
        while not mount.raw_store.exists("kept.txt") and time.monotonic() < deadline:
            time.sleep(0.1)  # closed before the disk filled: uploaded in the background
        assert mount.raw_store.get("kept.txt") == b"already on the server"
        assert (mount.path / "kept.txt").read_bytes() == b"already on the server"
        os.unlink(mount.path / "big.bin")
        (mount.path / "small.txt").write_bytes(b"after")
        assert mount.store.get("small.txt") == b"after"
    finally:
        mount.stop()


@pytest.fixture
def own_seaweed() -> Iterator[SeaweedServer]:
    """A SeaweedFS this test may stop (the session's one is shared)."""
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_server_gone_after_mount_gives_eio_in_bounded_time(
    own_seaweed: SeaweedServer, tmp_path: Path
) -> None:
    env = s3_store_env(own_seaweed)
    with mount_factory_for(env, tmp_path / "mounts") as factory:
        factory.fail_on_tracebacks = True
        mount = factory(options=["retry_timeout=2", "attr_timeout=0", "entry_timeout=0"])
        assert mount.store is not None
        mount.store.put("cold.bin", os.urandom(100_000))
        (mount.path / "written.txt").write_bytes(b"safe")
        # its upload starts at the kernel's RELEASE, which comes after close() returned
        mount.flush(mount.path / "written.txt")
        pending = os.open(mount.path / "pending.txt", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(pending, b"written while the server was up, closed after it died")
        assert own_seaweed.proc is not None
        own_seaweed.proc.kill()
        own_seaweed.proc.wait()

        started = time.monotonic()
        assert errno_of((mount.path / "cold.bin").read_bytes) == errno.EIO
        assert time.monotonic() - started < 30

        started = time.monotonic()
        # write-back: close does not wait for the upload, fsync does and reports its failure
        assert errno_of(lambda: os.fsync(pending)) == errno.EIO
        assert time.monotonic() - started < 30
        os.close(pending)
        assert json.loads(os.getxattr(mount.path, "user.bucketfs.status"))["dirty_files"] == 1

        # the daemon is still there and answers what needs no server
        assert os.statvfs(mount.path).f_blocks > 0
        assert mount.proc is not None
        assert mount.proc.poll() is None
        # unmounting does not hang on the dirty file it cannot upload, and says so
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bucketfs", "umount", str(mount.path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=mount.env,
            check=False,
        )
        assert done.returncode == 1
        assert "could not be uploaded" in done.stderr
        assert "uploaded by the next mount" in done.stderr
        assert mount.proc.wait(timeout=60) is not None
        assert time.monotonic() - started < 90
        mount.proc = None
        log = mount.log.read_text()
        assert "not uploaded" in log
        assert "pending.txt" in log
        assert "cannot connect" in log  # the rate-limited warning says why


def test_object_deleted_behind_the_mount(mount_factory: MountFactory) -> None:
    mount = mount_factory(options=["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"])
    assert mount.store is not None
    mount.store.put("gone.txt", b"soon gone")
    assert (mount.path / "gone.txt").read_bytes() == b"soon gone"
    mount.store.delete("gone.txt")
    with pytest.raises(FileNotFoundError):
        (mount.path / "gone.txt").read_bytes()
    assert "gone.txt" not in os.listdir(mount.path)
    (mount.path / "still.txt").write_bytes(b"serving")
    assert mount.store.get("still.txt") == b"serving"


def test_object_replaced_behind_the_mount_is_seen_at_next_open(
    mount_factory: MountFactory,
) -> None:
    mount = mount_factory()
    assert mount.store is not None
    mount.store.put("v.txt", b"version one")
    assert (mount.path / "v.txt").read_bytes() == b"version one"
    mount.store.put("v.txt", b"version two, longer")
    time.sleep(1.2)  # attr_timeout: the kernel asks again
    assert (mount.path / "v.txt").read_bytes() == b"version two, longer"
