"""A request withdrawn between "/dev/fuse is readable" and the daemon's read of it must not stop
the daemon (bucketfs/readwatch.py).

Made to happen on purpose: strace delays the daemon's next read() by 1.5 s; meanwhile a
process makes a request (a `stat`) and is killed, which withdraws the request from the
kernel's queue. The delayed read then finds nothing and blocks, holding the GIL. A write-back
upload due two seconds after the file was closed must still reach the server with no further
request from anyone (a blocked daemon uploads only when some request wakes it up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.helpers import Mount, MountFactory, require_tool

#: how long strace holds the daemon's read back
DELAY_US = 1_500_000


def daemon_syscall(mount: Mount) -> list[str]:
    assert mount.proc is not None
    pid = mount.proc.pid
    with open(f"/proc/{pid}/task/{pid}/syscall") as f:
        return f.read().split()


def test_a_withdrawn_request_does_not_stop_the_daemon(mount_factory: MountFactory) -> None:
    strace = require_tool("strace")
    mnt = mount_factory(options=["writeback_delay=2"])
    assert mnt.raw_store is not None
    assert mnt.proc is not None
    pid = mnt.proc.pid
    (mnt.path / "late").write_bytes(b"upload me")  # uploaded 2 s after this close
    delay = subprocess.Popen(
        [
            strace,
            "-q",
            "-o",
            os.devnull,
            "-p",
            str(pid),
            "-e",
            "trace=read",
            "-e",
            f"inject=read:delay_enter={DELAY_US}",
        ],
    )
    try:
        time.sleep(0.5)  # attached
        asker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys; os.stat(sys.argv[1])",
                str(mnt.path / "new-name"),
            ]
        )
        time.sleep(0.3)  # its request is queued; the daemon's read of it is held back
        assert asker.poll() is None, "the request was answered before the read was delayed"
        asker.send_signal(signal.SIGKILL)  # withdraws the request the daemon has not read
        asker.wait(timeout=30)
        time.sleep(DELAY_US / 1e6)  # the held read runs now, on an empty queue
    finally:
        delay.terminate()
        delay.wait(timeout=30)
    deadline = time.monotonic() + 15
    while not mnt.raw_store.exists("late"):
        assert time.monotonic() < deadline, (
            f"the upload never left: the daemon sits in syscall {daemon_syscall(mnt)[:2]}"
        )
        time.sleep(0.1)
    assert mnt.raw_store.get("late") == b"upload me"
    assert "interrupting a read of /dev/fuse" in mnt.log.read_text()
