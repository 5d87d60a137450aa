"""The /dev/fuse read watchdog (bucketfs/readwatch.py) without FUSE: its process watches this
one, whose main thread blocks in a read() of a pipe that gets no data, made from C the way
libfuse makes it (no retry on EINTR). The end-to-end race is tests/fuse/test_readwatch.py."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time

from bucketfs import readwatch

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
