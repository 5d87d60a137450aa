"""Receiving a body in a worker thread, off the trio thread (`pool.Exchange.readinto` and
`receive_each`, plain TCP only).

Owns `receive` (fill a buffer from a non-blocking socket, in the thread), `in_thread` (one
such job, woken and waited for when its caller is cancelled) and `ReceiveJob` (every fill of
a buffer received and handed to a `Sink` in one job: the sink writes it in the thread, and
the trio thread is woken once per fill with `run_sync_soon`, which needs no GIL hand-off to
a worker; two worker hand-offs per 2 MiB fill, receive then write, were the largest Python
cost of a cold read: docs/maintainers/performance.md, sessions 14 and 15).

Invariants: no thread touches a buffer, a socket or the sink after the call that started it
returned (a cancellation, or a `Sink.landed` that raised, wakes the thread through an eventfd
and waits for it, shielded); every fill `write` took is announced before the job's end, so
`landed` runs once per `write`, in order, unless the call is cancelled or `landed` raised.
"""

from __future__ import annotations

import math
import os
import select
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import httpx2
import outcome
import trio

from bucketfs.backends.base import Sink

T = TypeVar("T")


def _poller(fd: int, events: int, wake: int, timeout: float) -> tuple[select.poll, int]:
    """A poll of the socket `fd` for `events` and of `wake`, and its wait in ms (-1: none)."""
    poller = select.poll()
    poller.register(fd, events)
    poller.register(wake, select.POLLIN)
    return poller, -1 if math.isinf(timeout) else max(1, int(timeout * 1000))


def receive(fd: int, view: memoryview, wake: int, timeout: float) -> tuple[int, Exception | None]:
    """In a worker thread: fill `view` from the non-blocking socket `fd`. Returns the bytes
    received and what stopped it early: a timeout, a broken or closed connection, or `wake`
    (the caller was cancelled)."""
    poller, wait = _poller(fd, select.POLLIN, wake, timeout)
    got = 0
    while got < len(view):
        try:
            n = os.readv(fd, [view[got:]])
        except BlockingIOError:
            ready = poller.poll(wait)
            if not ready:
                return got, httpx2.ReadTimeout("timed out reading")
            if any(f == wake for f, _ in ready):
                return got, _Woken()
            continue
        except OSError as exc:
            return got, httpx2.ReadError(str(exc) or type(exc).__name__)
        if not n:
            return got, httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            )
        got += n
    return got, None


def transmit(fd: int, view: memoryview, wake: int, timeout: float) -> Exception | None:
    """In a worker thread: send all of `view` on the non-blocking socket `fd`. Returns what
    stopped it early: a timeout, a broken connection, or `wake` (the caller was cancelled);
    None when all of it went."""
    poller, wait = _poller(fd, select.POLLOUT, wake, timeout)
    sent = 0
    while sent < len(view):
        try:
            sent += os.write(fd, view[sent:])
        except BlockingIOError:
            ready = poller.poll(wait)
            if not ready:
                return httpx2.WriteTimeout("timed out sending")
            if any(f == wake for f, _ in ready):
                return _Woken()
        except OSError as exc:
            return httpx2.WriteError(str(exc) or type(exc).__name__)
    return None


class ReceiveJob:
    """`Exchange.receive_each`'s worker-thread job and its trio side: fills of `view` from
    `pending` (what h11 held of the body) then the socket, each written by `sink.write` in the
    thread and announced to the trio thread (`run_sync_soon`) for `sink.landed`."""

    def __init__(
        self, fd: int, timeout: float, view: memoryview, sink: Sink, pending: bytes
    ) -> None:
        self._fd = fd
        self._timeout = timeout
        self._view = view
        self._sink = sink
        self._pending = pending
        #: bytes of `pending` used, bytes from the socket (the thread counts them)
        self.taken = 0
        self.received = 0
        self._stop = False
        self._announced = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._token = trio.lowlevel.current_trio_token()

    async def run(self, left: int) -> tuple[int, Exception | None]:
        """Receive up to `left` bytes from the socket: (bytes handed to the sink, the error
        that broke the connection); `taken` and `received` say what was used."""
        result: deque[outcome.Outcome[tuple[int, Exception | None]]] = deque()

        def finished(value: outcome.Outcome[tuple[int, Exception | None]]) -> None:
            def land() -> None:
                result.append(value)
                self._lot.unpark_all()

            self._token.run_sync_soon(land)

        wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            trio.lowlevel.start_thread_soon(lambda: self._receive(left, wake), finished)
            try:
                while True:
                    while self._announced:  # each announced before `finished`: none missed
                        self._announced -= 1
                        self._sink.landed()
                    if result:
                        return result[0].unwrap()
                    await self._lot.park()
            finally:
                if not result:  # cancelled, or `landed` raised: stop the thread, wait for it
                    self._stop = True
                    os.eventfd_write(wake, 1)
                    with trio.CancelScope(shield=True):
                        while not result:
                            await self._lot.park()
        finally:
            os.close(wake)

    def _announce(self) -> None:  # on the trio thread
        self._announced += 1
        self._lot.unpark_all()

    def _receive(self, left: int, wake: int) -> tuple[int, Exception | None]:
        """In the worker thread: fill, write, announce, until `left` socket bytes came."""
        view, total = self._view, 0
        while not self._stop:
            lead = self._pending[self.taken : self.taken + len(view)]
            want = min(len(view) - len(lead), left - self.received)
            if not lead and not want:
                break
            view[: len(lead)] = lead
            self.taken += len(lead)
            n, error = 0, None
            if want:
                part = view[len(lead) : len(lead) + want]
                n, error = receive(self._fd, part, wake, self._timeout)
            self.received += n
            filled = len(lead) + n
            go_on = True
            if filled:
                go_on = self._sink.write(view[:filled])
                total += filled
                self._token.run_sync_soon(self._announce)
            if error is not None:
                return total, error
            if not go_on or filled < len(view):
                break
        return total, None


class _Woken(Exception):
    """A worker thread's receive stopped because its caller was cancelled (never raised
    outside this module: the cancellation is)."""


async def in_thread(fn: Callable[[int], T]) -> T:
    """`fn(wake)` in a worker thread; when the caller is cancelled, `wake` (an eventfd)
    becomes readable and the caller waits for `fn` to return before it leaves."""
    wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []

    def deliver(value: outcome.Outcome[T]) -> None:
        def land() -> None:
            result.append(value)
            done.set()

        token.run_sync_soon(land)

    try:
        trio.lowlevel.start_thread_soon(lambda: fn(wake), deliver)
        try:
            await done.wait()
        finally:
            if not done.is_set():
                os.eventfd_write(wake, 1)
                with trio.CancelScope(shield=True):
                    await done.wait()
        return result[0].unwrap()
    finally:
        os.close(wake)
