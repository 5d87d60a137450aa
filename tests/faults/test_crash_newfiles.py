"""SIGKILL of the daemon around the one index commit of a new file (issue 17 item 4: a new
file is recorded at its first FLUSH, docs/cache.md "Work per kernel request"), then a new
daemon on the same cache directory.

What must hold:
- between CREATE/WRITE and the first FLUSH (the file open, never closed) the file may be
  lost, and then it leaves nothing: no object, no entry in the mount, no dirty file in the
  status; a file fsynced, or renamed, while open is kept; everything closed survives; new
  files made after the restart (their ids may be the lost files' ids) hold their own bytes;
- right after `close` returned (its FLUSH was answered, the RELEASE may not have come) the
  file survives with its content and what was set on the descriptor before close;
- killed at a random point of a burst of small creates, every file whose `close` returned is
  on the server byte for byte, and the one being written is either whole or absent.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

from tests.support.crash import CrashMount, CrashMounts, blob, describe, wait_for, write_file

OLD = 1_000_000_000  # 2001-09-09T01:46:40Z


def check_exact(mount: CrashMount, expected: dict[str, bytes]) -> None:
    server = mount.server
    for name, data in expected.items():
        got = server.get(name) if server.exists(name) else b"<missing>"
        assert got == data, f"{name}: server has {describe(got)}, expected {describe(data)}"
    assert server.keys() == sorted(expected), "objects on the server"


def close_after_kill(fd: int) -> None:
    """Close a descriptor on the killed mount (its FLUSH fails: the daemon is gone)."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            raise


def test_kill_between_write_and_first_flush_loses_only_open_files(
    crash_mounts: CrashMounts,
) -> None:
    mount = crash_mounts(["writeback_delay=3600"])
    root = mount.path
    expected: dict[str, bytes] = {}
    for i in range(3):
        write_file(root / f"closed{i}.txt", blob(1 + i, 1000 + i))
        expected[f"closed{i}.txt"] = blob(1 + i, 1000 + i)
    fds = []
    for i in range(3):  # created and written, never closed
        fd = os.open(root / f"open{i}.txt", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, blob(5, 2000))
        fds.append(fd)
    fd = os.open(root / "synced.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, blob(6, 3000))
    os.fsync(fd)  # on the server when fsync returns
    fds.append(fd)
    expected["synced.txt"] = blob(6, 3000)
    fd = os.open(root / "tmp.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, blob(7, 4000))
    os.rename(root / "tmp.txt", root / "renamed.txt")  # a rename records the file first
    fds.append(fd)
    expected["renamed.txt"] = blob(7, 4000)
    fd = os.open(root / "scratch.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, blob(8, 500))
    os.unlink(root / "scratch.txt")
    fds.append(fd)

    mount.kill()
    for fd in fds:
        close_after_kill(fd)
    mount.start()
    assert sorted(os.listdir(root)) == sorted(expected)
    # new files after the restart: each holds its own bytes, never a lost file's
    for i in range(6):
        write_file(root / f"new{i}.txt", blob(9, 10 + i))
        expected[f"new{i}.txt"] = blob(9, 10 + i)
    mount.flush_all()
    check_exact(mount, expected)
    for name, data in expected.items():
        assert (root / name).read_bytes() == data, name


def test_kill_right_after_close_keeps_the_file(crash_mounts: CrashMounts) -> None:
    """Killed as soon as the last `close` returned: the kernel sends RELEASE after `close`
    returns, so it may never have been handled. For half of the files it surely was not: a
    duplicate descriptor (as another process holding it would) keeps the open file, so its
    `close` sent only the FLUSH. What the FLUSH recorded must be all it takes."""
    mount = crash_mounts(["writeback_delay=3600"])
    root = mount.path
    expected: dict[str, bytes] = {}
    keepers = []
    for i in range(20):
        data = blob(i, 100 * i + 1)
        fd = os.open(root / f"f{i:02d}", os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, data)
        if i == 19:  # as cp -p and tar do, on the descriptor before close
            os.fchmod(fd, 0o640)
            os.utime(fd, (OLD, OLD))
        if i % 2:
            keepers.append(os.dup(fd))  # no RELEASE for this file before the kill
        os.close(fd)
        expected[f"f{i:02d}"] = data
    mount.kill()
    for fd in keepers:
        close_after_kill(fd)
    mount.start()
    assert os.stat(root / "f19").st_mode & 0o777 == 0o640
    assert os.stat(root / "f19").st_mtime == OLD
    mount.flush_all()
    check_exact(mount, expected)
    assert mount.server.head("f19")[1]["mtime"] == str(OLD)


def test_kill_during_a_burst_of_small_creates(crash_mounts: CrashMounts) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    mount = crash_mounts(["writeback_delay=3600"])
    root = mount.path
    closed: dict[str, bytes] = {}
    writing: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def burst(start: int) -> None:
        n = start
        try:
            while True:
                name, data = f"s{n:05d}", blob(n, 1000)
                writing[name] = data
                with open(root / name, "wb") as f:
                    f.write(data)
                closed[name] = data
                del writing[name]
                n += 1
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENOENT):
                errors.append(exc)
        except BaseException as exc:
            errors.append(exc)

    expected: dict[str, bytes] = {}
    for round_ in range(2):
        writer = threading.Thread(target=burst, args=(round_ * 10_000,), daemon=True)
        writer.start()
        wait_for("some closes", lambda t=writer: len(closed) > 20 or not t.is_alive(), 60)
        time.sleep(rng.uniform(0.0, 0.5))
        mount.kill()
        writer.join(timeout=30)
        assert not writer.is_alive(), "the writer is stuck on the killed mount"
        assert not errors, f"the writer failed before the kill: {errors!r}"
        mount.start()
        expected.update(closed)
        for name, data in writing.items():  # open at the kill: whole or absent
            if (root / name).exists():
                assert (root / name).read_bytes() == data, name
                expected[name] = data
        writing.clear()
        listed = set(os.listdir(root))
        assert listed == set(expected), sorted(listed ^ set(expected))[:10]
        mount.flush_all()
        check_exact(mount, expected)


def test_new_file_written_again_after_its_flush_survives(crash_mounts: CrashMounts) -> None:
    """After the first FLUSH the file is in the index: later writes through a still-open
    descriptor (a shell's `>` closes a duplicate first) are recorded as they return."""
    mount = crash_mounts(["writeback_delay=3600"])
    root: Path = mount.path
    fd = os.open(root / "dup.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    dup = os.dup(fd)
    os.close(dup)  # FLUSH: recorded, empty
    os.write(fd, blob(3, 700))
    mount.kill()
    close_after_kill(fd)
    mount.start()
    mount.flush_all()
    check_exact(mount, {"dup.txt": blob(3, 700)})
