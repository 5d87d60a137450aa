"""SIGKILL of the daemon while a large new file's parts go early (bucketfs/cache/early.py),
then a new daemon on the same cache directory: nothing closed is lost, and no multipart
upload is left on the server (the upload ids are journaled in the cache's index before the
first part goes; the next mount aborts them). On the local store and SeaweedFS (which lists
the uploads in progress: ListMultipartUploads).
"""

from __future__ import annotations

import contextlib
import os
import time

from tests.support.crash import CrashMount, CrashMounts, blob, wait_for

MiB = 1 << 20
PART = 5 * MiB
OPTIONS = ["part_size=5M", "early_parts=on", "writeback_delay=30"]


def early_sent(mount: CrashMount) -> int:
    return int(mount.status()["early_parts"]["sent"])


def write_some(f: int, data: bytes) -> None:
    for pos in range(0, len(data), MiB):
        os.write(f, data[pos : pos + MiB])


def test_kill_in_the_quiet_period_with_early_parts(crash_mounts: CrashMounts) -> None:
    """Closed, its parts on their way, killed before the due upload: the next daemon uploads
    it whole and aborts the early upload."""
    mount = crash_mounts(OPTIONS)
    server = mount.server
    data = blob(3, 6 * PART + 77)
    f = os.open(mount.path / "closed.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_some(f, data)
    finally:
        os.close(f)
    wait_for("parts sent early", lambda: early_sent(mount) >= 2, 30)
    assert mount.status()["early_parts"]["open_uploads"] == 1
    assert len(server.open_uploads()) == 1
    mount.kill()
    assert not server.exists("closed.bin")
    assert len(server.open_uploads()) == 1  # what the killed daemon left

    mount.start()
    wait_for("the recovery upload", lambda: mount.status()["dirty_files"] == 0, 60, 0.05)
    wait_for("the journal emptied", lambda: mount.status()["early_parts"]["open_uploads"] == 0, 30)
    assert server.open_uploads() == []
    assert server.get("closed.bin") == data
    assert server.head("closed.bin")[1]["mode"] == str(0o100600)


def test_kill_while_written_leaves_no_upload(crash_mounts: CrashMounts) -> None:
    """Still open (never closed), parts sent: the file is lost as a local file system may lose
    one never closed, and its multipart upload is aborted by the next daemon. A file closed
    before it is kept."""
    mount = crash_mounts(OPTIONS)
    server = mount.server
    kept = blob(4, 300_000)
    (mount.path / "kept.txt").write_bytes(kept)
    f = os.open(mount.path / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_some(f, blob(5, 4 * PART))
        wait_for("parts sent early", lambda: early_sent(mount) >= 1, 30)
        assert len(server.open_uploads()) == 1
        mount.kill()
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the daemon is gone
            os.close(f)
    mount.start()
    deadline = time.monotonic() + 30
    while server.open_uploads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.open_uploads() == []
    assert mount.status()["early_parts"]["open_uploads"] == 0
    mount.flush_all()
    assert server.get("kept.txt") == kept
    assert not server.exists("open.bin")
