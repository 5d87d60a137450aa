"""SIGKILL of the daemon during the upload quiet period (`writeback_delay`), then a new daemon
on the same cache directory (docs/cache.md, "Crash recovery"; tests/faults/test_crash.py has
the other kill points).

What tar, rsync and cp change right after close (times, mode, owner, xattrs) is not sent by
itself any more: it waits in the cache's index with the content for the one upload. A kill
before that upload must lose neither: the next daemon uploads the content with every attribute
set before the kill, under the name the file had then.
"""

from __future__ import annotations

import os

from tests.support.crash import CrashMounts, blob, wait_for, write_file

OLD = 1_000_000_000  # 2001-09-09T01:46:40Z


def test_kill_during_the_quiet_period_loses_nothing(crash_mounts: CrashMounts) -> None:
    # 5 s instead of the default 1 s: on a loaded machine the kill must still come first
    mount = crash_mounts(["writeback_delay=5"])
    server = mount.server
    server.put("old.txt", blob(1, 5000))
    root = mount.path
    assert (root / "old.txt").read_bytes() == blob(1, 5000)

    write_file(root / "new.bin", blob(2, 300_000))
    os.chmod(root / "new.bin", 0o600)
    write_file(root / "old.txt", blob(3, 7000))
    os.utime(root / "old.txt", (OLD, OLD))
    write_file(root / "tagged.txt", blob(4, 100))
    os.setxattr(root / "tagged.txt", "user.colour", b"blue")
    os.chown(root / "tagged.txt", 1234, 4321)
    write_file(root / ".moved.tmp", blob(5, 2000))  # rsync: a temporary name, then renamed
    os.utime(root / ".moved.tmp", (OLD, OLD))
    os.rename(root / ".moved.tmp", root / "moved.txt")

    status = mount.status()
    assert (status["uploads"], status["uploading"], status["dirty_files"]) == (0, 0, 4), status
    mount.kill()
    assert not server.exists("new.bin")
    assert server.get("old.txt") == blob(1, 5000)

    mount.start()  # recovered files go up at once, quiet period or not
    wait_for("the recovery uploads", lambda: mount.status()["dirty_files"] == 0, 30, 0.05)
    assert sorted(server.keys()) == ["moved.txt", "new.bin", "old.txt", "tagged.txt"]
    assert server.get("new.bin") == blob(2, 300_000)
    assert server.head("new.bin")[1]["mode"] == str(0o100600)
    assert server.get("old.txt") == blob(3, 7000)
    assert server.head("old.txt")[1]["mtime"] == str(OLD)
    assert server.get("tagged.txt") == blob(4, 100)
    tagged = server.head("tagged.txt")[1]
    assert (tagged["colour"], tagged["uid"], tagged["gid"]) == ("blue", "1234", "4321")
    assert server.get("moved.txt") == blob(5, 2000)
    assert server.head("moved.txt")[1]["mtime"] == str(OLD)
    # and the mount shows them so
    assert os.stat(root / "new.bin").st_mode & 0o777 == 0o600
    assert os.stat(root / "old.txt").st_mtime == OLD
    assert os.getxattr(root / "tagged.txt", "user.colour") == b"blue"
