"""Keeps pyfuse3's read of /dev/fuse from stopping the daemon.

Owns a small watchdog process and the SIGUSR2 handler it relies on.

The pyfuse3 behaviour it exists for (pyfuse3 3.5.0, `_session_loop` in its internal.pxi):
pyfuse3 waits until /dev/fuse is readable (trio's `wait_readable`), then reads a request with
libfuse's `fuse_session_receive_buf`: a *blocking* read(), made while holding the GIL (no
`nogil` around it). A request can leave the kernel's queue between the two:
a fatal signal to the process that made it (a tool killed, rsync ending its helper processes)
withdraws a request the daemon has not read yet. The read then blocks the daemon whole: no
upload, fetch or worker-thread result is handled until the kernel queues another request, and
a process waiting for a request whose handler waits for one of those waits forever. CI saw
it (session 4): `open` after an rsync into the mount and `git add`/`git commit` stuck for
minutes; `tests/fuse/test_readwatch.py` makes it happen on purpose.

Two defences. First, the window is narrowed to almost nothing: `narrow_reads` wraps the
`trio.lowlevel.wait_readable` that pyfuse3 calls so that, for the /dev/fuse descriptor only,
it returns after a zero-timeout poll() says a request is queued *right now*; between that
poll and pyfuse3's read there is no await, so only a withdrawal in those few microseconds can
still leave the read empty. (Without it the window spans a whole turn of trio's loop: every
task that became runnable with the readiness runs first, and one of them answering the very
request a FUSE_INTERRUPT in the queue was about for also empties the queue.)

Second, for what is left, a thread of the daemon cannot help (it needs the GIL the read
holds), so a separate process
(`python -m bucketfs.fuse.readwatch PID FD`) reads the daemon's current system call
(/proc/PID/syscall) every INTERVAL seconds; when two samples in a row show read() on the
/dev/fuse descriptor, it sends the daemon's main thread SIGUSR2, whose handler does nothing.
read() then fails with EINTR, which pyfuse3 handles by waiting for readability again.

When it is no longer needed: when pyfuse3 (or libfuse under it) no longer blocks in that
read, e.g. it reads /dev/fuse non-blocking and takes EAGAIN as "wait for readability again".
Look for that in pyfuse3's `_session_loop` and its changelog, then prove it: with `protect`
made a no-op (`fuse/session.py` calls it once), `tests/fuse/test_readwatch.py` must still pass
on all three stores (its first test failed without this module on all three: session 4 in
docs/maintainers/NEXT.md). Then remove this module, its call and
`tests/unit/fuse/test_readwatch.py` together; keep the FUSE test, it guards the behaviour.

Invariants: the signal goes only to the thread that runs pyfuse3, only while it sits in that
read (a read of a queued request returns at once); a spurious interruption is harmless
(pyfuse3 retries an interrupted read); the watchdog dies with the daemon, even on SIGKILL;
`narrow_reads` changes nothing for any other descriptor, and an error or hang-up on /dev/fuse
(unmount) still counts as readable, so pyfuse3 sees it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


#: the read() system call's number, by machine
READ_SYSCALL = {"x86_64": 0, "aarch64": 63, "arm64": 63}
#: tgkill(2), by machine
TGKILL_SYSCALL = {"x86_64": 234, "aarch64": 131, "arm64": 131}
#: seconds between two looks at the daemon
INTERVAL = 0.05
SIGNAL = signal.SIGUSR2
_PR_SET_PDEATHSIG = 1
_PR_SET_PTRACER = 0x59616D61


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """Only here so that SIGUSR2 interrupts a system call instead of killing the daemon."""


def fuse_fd(pid: int | str = "self") -> int | None:
    """The /dev/fuse descriptor of a process, by default this one (pyfuse3 opens exactly one)."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == "/dev/fuse":
                return int(name)
    return None


def _queued(poller: select.poll) -> bool:
    """Whether the descriptor registered in `poller` has a request (or an error) right now."""
    return bool(poller.poll(0))


def narrow_reads(fd: int) -> Callable[[], None]:
    """Make `trio.lowlevel.wait_readable(fd)` (pyfuse3's wait before each read) return only
    while a request is queued; returns the function that undoes it."""
    import trio  # here, not at the top: the watchdog process runs this module without trio

    original = trio.lowlevel.wait_readable
    fuse = fd
    poller = select.poll()
    poller.register(fuse, select.POLLIN)

    async def wait_readable(fd: Any) -> None:  # an int or anything with fileno(), as trio's
        await original(fd)
        if isinstance(fd, int) and fd == fuse:
            while not _queued(poller):
                await original(fd)

    trio.lowlevel.wait_readable = wait_readable

    def undo() -> None:
        trio.lowlevel.wait_readable = original

    return undo


def protect() -> Callable[[], None]:
    """In the daemon's main thread, once mounted: both defences for this process's /dev/fuse
    descriptor; returns the function that ends them (before pyfuse3.close)."""
    fd = fuse_fd()
    if fd is None:
        return lambda: None
    unnarrow = narrow_reads(fd)
    proc = start(fd)

    def end() -> None:
        stop(proc)
        unnarrow()

    return end


def start(fd: int) -> subprocess.Popen[bytes] | None:
    """In the daemon's main thread: set the SIGUSR2 handler and start the watchdog process
    for descriptor `fd`; None where it cannot work (unknown machine)."""
    if platform.machine() not in READ_SYSCALL:
        log.debug("no read() syscall number for %s: not watching", platform.machine())
        return None
    signal.signal(SIGNAL, _ignore)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bucketfs.fuse.readwatch", str(os.getpid()), str(fd)],
        stdin=subprocess.DEVNULL,
        close_fds=True,
    )
    # Yama (ptrace_scope 1) lets only ancestors read a process's system call: allow ours
    ctypes.CDLL(None).prctl(_PR_SET_PTRACER, proc.pid)
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def syscall_fields(pid: int, tid: int | None = None) -> list[str]:
    """The system call thread `tid` of `pid` (default: its main thread) is in, as /proc
    shows it: its number and arguments, or `running` (OSError if hidden)."""
    with open(f"/proc/{pid}/task/{tid or pid}/syscall", encoding="ascii") as f:
        return f.read().split()


def in_read(pid: int, fd: int, read_nr: int) -> bool:
    """Whether thread `pid` of process `pid` is in read(fd) right now."""
    try:
        fields = syscall_fields(pid)
    except OSError:
        return False
    return (
        len(fields) > 1
        and fields[0] == str(read_nr)
        and fields[1].startswith("0x")
        and int(fields[1], 16) == fd
    )


def watch(pid: int, fd: int, interval: float = INTERVAL) -> None:
    """The watchdog process's loop, until `pid` is gone."""
    machine = platform.machine()
    read_nr, tgkill_nr = READ_SYSCALL[machine], TGKILL_SYSCALL[machine]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the daemon, even on kill -9
    try:
        syscall_fields(pid)
    except OSError as exc:  # e.g. Yama's ptrace_scope for a daemon not run by root
        print(f"bucketfs.fuse.readwatch: cannot watch {pid}: {exc.strerror}", flush=True)
        return
    seen = 0
    while os.getppid() == pid:
        time.sleep(interval)
        seen = seen + 1 if in_read(pid, fd, read_nr) else 0
        if seen >= 2:
            seen = 0
            print(f"bucketfs.fuse.readwatch: interrupting a read of /dev/fuse in {pid}", flush=True)
            libc.syscall(tgkill_nr, pid, pid, int(SIGNAL))


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
