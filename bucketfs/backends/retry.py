"""The one retry loop of the backends: exponential backoff with full jitter under a deadline.

Owns `retry_call`. Invariants: only `Transient` (and its subclass `Unreachable`) is retried,
every other exception propagates at once; no new attempt starts after `deadline` seconds from
the first one (a wait that would end past the deadline is not started: the last error is raised
at once); a running attempt is never cancelled by the deadline (its own HTTP
timeouts bound it, so a long upload is not killed half-way); the error raised at the end is the
last attempt's, of the same class, with the number of attempts added. Callers never loop.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from bucketfs.errors import Transient

log = logging.getLogger(__name__)

T = TypeVar("T")

BASE_DELAY = 0.1
MAX_DELAY = 5.0


def backoff(attempt: int, *, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Full jitter: a uniform wait in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0.0, min(cap, base * 2 ** min(attempt, 30)))


async def retry_call(
    attempt_fn: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    what: str,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
) -> T:
    """Await `attempt_fn()` until it returns, raises a non-`Transient` error, or `deadline`
    seconds have passed since the first attempt; then re-raise the last `Transient`."""
    give_up_at = trio.current_time() + deadline
    attempt = 0
    while True:
        try:
            return await attempt_fn()
        except Transient as exc:
            wait = backoff(attempt, base=base, cap=cap)
            attempt += 1
            if trio.current_time() + wait >= give_up_at:
                raise type(exc)(f"{exc} (gave up after {attempt} attempts)") from exc
            log.debug("%s: %s; retry %d in %.2fs", what, exc, attempt, wait)
        await trio.sleep(wait)
