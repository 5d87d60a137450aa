"""The /dev/fuse read watchdog (bucketfs/fuse/readwatch.py) without FUSE: its process watches this
one, whose main thread blocks in a read() of a pipe that gets no data, made from C the way
libfuse makes it (no retry on EINTR). The end-to-end race is tests/fuse/test_readwatch.py."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time
from typing import Any

import trio

from bucketfs.fuse import readwatch

#: without the watchdog the read below returns only when this late write arrives
LATE_WRITE = 10.0


def c_read(fd: int) -> tuple[int, int]:
    """read(2) through libc: (result, errno)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(16)
    ctypes.set_errno(0)
    result = libc.read(fd, buf, 16)
    return result, ctypes.get_errno()


def test_a_read_that_finds_nothing_is_interrupted() -> None:
    r, w = os.pipe()
    late = threading.Timer(LATE_WRITE, os.write, (w, b"late"))
    late.start()
    proc = readwatch.start(r)
    try:
        assert proc is not None
        time.sleep(1.0)  # the watchdog process is up
        started = time.monotonic()
        result, err = c_read(r)
        took = time.monotonic() - started
    finally:
        readwatch.stop(proc)
        signal.signal(readwatch.SIGNAL, signal.SIG_DFL)
        late.cancel()
        os.close(r)
        os.close(w)
    assert (result, err) == (-1, errno.EINTR)
    assert took < LATE_WRITE / 2


def test_a_read_of_waiting_data_is_not_watched_into_an_error() -> None:
    r, w = os.pipe()
    proc = readwatch.start(r)
    try:
        time.sleep(1.0)
        for _ in range(20):
            os.write(w, b"x")
            assert c_read(r) == (1, 0)
            time.sleep(0.02)
    finally:
        readwatch.stop(proc)
        signal.signal(readwatch.SIGNAL, signal.SIG_DFL)
        os.close(r)
        os.close(w)


def test_in_read_is_false_for_a_process_that_is_not_reading() -> None:
    assert not readwatch.in_read(os.getpid(), 0, readwatch.READ_SYSCALL["x86_64"])
    assert readwatch.fuse_fd() is None  # no mount in this process


def test_narrowed_wait_returns_only_while_something_is_queued() -> None:
    """A readiness that is gone by the time the waiter runs (a withdrawn request) sends the
    waiter back to waiting instead of on to a read that would block."""
    r, w = os.pipe()
    real = trio.lowlevel.wait_readable
    spurious = [True]

    async def stale_then_real(fd: Any) -> None:
        if spurious.pop() if spurious else False:
            return  # as if the queue had emptied since trio saw it readable
        await real(fd)

    async def main() -> list[str]:
        events: list[str] = []
        trio.lowlevel.wait_readable = stale_then_real
        undo = readwatch.narrow_reads(r)
        try:

            async def waiter() -> None:
                await trio.lowlevel.wait_readable(r)
                events.append("woken")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.2)
                events.append("write")
                os.write(w, b"x")
        finally:
            undo()
            trio.lowlevel.wait_readable = real
        return events

    try:
        assert trio.run(main) == ["write", "woken"]
        assert not spurious  # the stale readiness was seen and skipped
    finally:
        os.close(r)
        os.close(w)


def test_narrowing_leaves_other_descriptors_alone() -> None:
    r, w = os.pipe()
    other_r, other_w = os.pipe()
    real = trio.lowlevel.wait_readable

    async def main() -> None:
        undo = readwatch.narrow_reads(r)
        try:
            os.write(other_w, b"x")
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(other_r)
        finally:
            undo()
        assert trio.lowlevel.wait_readable is real

    try:
        trio.run(main)
    finally:
        for fd in (r, w, other_r, other_w):
            os.close(fd)
