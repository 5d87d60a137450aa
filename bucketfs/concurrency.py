"""Fan-out helpers: run requests concurrently and report failure as one typed error; and
`Foreground`, which background work asks whether requests that someone waits for keep coming.

Owns the translation of trio's `ExceptionGroup`s back into a single `BucketfsError`. Invariants:
every task runs inside a nursery owned by the caller's scope (nothing outlives the call); when
every failure in a group is a `BucketfsError`, the first one is raised alone, so errno mapping
still works; a group holding anything else (a bug, a cancellation) is re-raised untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

from bucketfs.errors import BucketfsError

T = TypeVar("T")


def _single(group: BaseExceptionGroup[BaseException]) -> BucketfsError | None:
    errors: list[BaseException] = []

    def flatten(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                flatten(inner)
        else:
            errors.append(exc)

    flatten(group)
    if errors and all(isinstance(exc, BucketfsError) for exc in errors):
        first = errors[0]
        assert isinstance(first, BucketfsError)
        return first
    return None


async def gather(*fns: Callable[[], Awaitable[object]]) -> None:
    """Run the functions concurrently; raise one BucketfsError if any failed."""
    try:
        async with trio.open_nursery() as nursery:
            for fn in fns:
                nursery.start_soon(fn)
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from group


async def for_each(
    items: Iterable[T], fn: Callable[[T], Awaitable[object]], limiter: trio.CapacityLimiter
) -> None:
    """Call `fn(item)` for every item, at most `limiter` at a time; one error if any failed."""

    async def bounded(item: T) -> None:
        async with limiter:
            await fn(item)

    try:
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(bounded, item)
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from group


class Foreground:
    """When the last request someone waits for (a kernel request) began and ended, and how
    many run now. The FUSE adapter reports each (`begin`, `end`); background work that can
    wait (write-back uploads) asks `busy` and yields to them, since every step of it runs on
    the same thread as the requests a program is blocked on."""

    def __init__(self) -> None:
        self.active = 0
        self.last = -1e18  # trio time of the last begin or end
        #: kernel requests begun, by operation (`bucketfs status`: `kernel_requests`)
        self.requests: Counter[str] = Counter()

    def begin(self, op: str) -> None:
        self.requests[op] += 1
        self.active += 1
        self.last = trio.current_time()

    def end(self) -> None:
        self.active -= 1
        self.last = trio.current_time()

    def busy(self, idle: float) -> bool:
        """Whether a request runs now or one ran less than `idle` seconds ago."""
        return self.active > 0 or trio.current_time() - self.last < idle
