"""A request withdrawn between "/dev/fuse is readable" and the daemon's read of it must not stop
the daemon (bucketfs/fuse/readwatch.py).

Made to happen on purpose: strace holds the daemon back for 1.5 s at a chosen system call;
meanwhile a process makes a request (a `stat`) and is killed, which withdraws the request from
the kernel's queue. A write-back upload due two seconds after the file was closed must still
reach the server with no further request from anyone (a daemon blocked in a read of an empty
queue uploads only when some request wakes it up).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bucketfs.fuse import readwatch
from tests.support.helpers import Mount, MountFactory, require_tool

#: the daemon's reading of /dev/fuse lies above the store: local store and SeaweedFS only
#: (tests/fuse/conftest.py)
pytestmark = pytest.mark.above_the_store

#: how long strace holds the daemon's read back
DELAY_US = 1_500_000


def withdraw_a_request_while(
    mnt: Mount, strace_filter: list[str], *, trace: Path, settle: float = 0.5
) -> None:
    """Attach strace with `strace_filter` (which holds the daemon back for DELAY_US; its log
    goes to `trace`), let the daemon settle, make a request and kill its process meanwhile;
    then wait for the write-back upload of `late` (closed just before)."""
    strace = require_tool("strace")
    assert mnt.raw_store is not None
    assert mnt.proc is not None
    delay = subprocess.Popen(
        [strace, "-q", "-tt", "-o", str(trace), "-p", str(mnt.proc.pid), *strace_filter]
    )
    try:
        time.sleep(settle)  # attached, and past whatever the daemon was doing then
        asker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys; os.stat(sys.argv[1])",
                str(mnt.path / "new-name"),
            ]
        )
        time.sleep(0.3)  # its request is queued; the daemon is held back before reading it
        assert asker.poll() is None, "the request was answered before the daemon was held"
        asker.send_signal(signal.SIGKILL)  # withdraws the request the daemon has not read
        asker.wait(timeout=30)
        time.sleep(DELAY_US / 1e6)  # the daemon goes on now, with an empty queue
    finally:
        delay.terminate()
        delay.wait(timeout=30)
    deadline = time.monotonic() + 15
    while not mnt.raw_store.exists("late"):
        assert time.monotonic() < deadline, (
            f"the upload never left: daemon in {readwatch.syscall_fields(mnt.proc.pid)[:2]}"
        )
        time.sleep(0.1)
    assert mnt.raw_store.get("late") == b"upload me"


def test_a_withdrawn_request_does_not_stop_the_daemon(
    mount_factory: MountFactory, tmp_path: Path
) -> None:
    """The read itself is held back (after the daemon checked the queue): only the watchdog
    process can get the daemon out of that read."""
    mnt = mount_factory(options=["writeback_delay=2"])
    (mnt.path / "late").write_bytes(b"upload me")  # uploaded 2 s after this close
    withdraw_a_request_while(
        mnt,
        ["-e", "trace=read", "-e", f"inject=read:delay_enter={DELAY_US}"],
        trace=tmp_path / "strace.log",
    )
    assert "interrupting a read of /dev/fuse" in mnt.log.read_text()


def test_a_request_withdrawn_before_the_daemon_looks_is_never_read(
    mount_factory: MountFactory, tmp_path: Path
) -> None:
    """The daemon is held back right after the kernel said /dev/fuse is readable (the return
    of epoll_wait): the queue is checked again before the read, so no read blocks and the
    watchdog has nothing to do. The daemon must be idle in epoll_wait when the request comes
    (a later wake-up would hide the request), so the upload is due well after the test."""
    mnt = mount_factory(options=["writeback_delay=7"])
    (mnt.path / "late").write_bytes(b"upload me")
    time.sleep(1.5)  # past the mount's own one-second timer (read-ahead set-up)
    calls = "epoll_wait,epoll_pwait"
    trace = tmp_path / "strace.log"
    withdraw_a_request_while(
        mnt,
        ["-e", f"trace={calls}", "-e", f"inject={calls}:delay_exit={DELAY_US}"],
        trace=trace,
        settle=2.0,
    )
    assert mnt.proc is not None
    fd = readwatch.fuse_fd(mnt.proc.pid)
    assert fd is not None
    assert f"u32={fd}," in trace.read_text(), (
        f"the daemon was not held back on the request's readiness (fd {fd}):\n{trace.read_text()}"
    )
    assert "interrupting a read of /dev/fuse" not in mnt.log.read_text()
