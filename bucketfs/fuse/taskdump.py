"""What the daemon is waiting for: every trio task, every kernel request, every thread.

Owns the answer to SIGUSR1 (`kill -USR1 <daemon pid>`): a dump in the daemon's log at
WARNING, one line per task, outermost call first (`a > b > c`: a awaits b, which awaits c),
showing bucketfs's own frames (by their path in the package, `fuse/ops.py:120 read`) and the
innermost one; a frame that set a local `_since` (a kernel request, a local-store call in a
thread) shows how long it has been running. A request that never returns shows up as a chain
parked on an event, a lock, a socket or a thread; the test harness asks for a dump before it
takes down a daemon that hangs, so a hang seen once in CI can be read from its log.

The pyfuse3 and trio behaviour it exists for: a hung daemon shows nothing by itself. trio
prints no task tree, and a task parked on an event or a lock has no stack a thread dump
(py-spy) could show. trio's own walk (`Task.iter_await_frames`, as `_frames` here) follows
`cr_await` from a task's coroutine, but pyfuse3 (3.5.0) serves every kernel request inside
`_session_loop`, a Cython coroutine with no `cr_frame` or `cr_await`: the walk of a pyfuse3
worker task stops at pyfuse3's pure-Python `async_wrapper`, and our handler (`fuse/ops.py`
down to the cache and the backend) is invisible. So the chains below it are found as live
coroutines of this package that nothing else in the dump accounts for ("request:" lines,
from `gc`). Threads get their kernel view because a frame alone cannot tell a thread inside
SQLite or a read from one waiting for the GIL (added after the unexplained local-store hang
of docs/maintainers/NEXT.md, session 5).

When it is no longer needed: the "request:" part when trio's walk reaches our handler below a
pyfuse3 worker (a newer pyfuse3 whose session loop is plain Python, or Cython coroutines that
expose `cr_await`): check that a dump taken while a read hangs (tests/faults/test_outage.py,
`test_the_task_dump_names_what_a_stuck_read_waits_for`) shows the `read > ... materialize`
chain on the pyfuse3 worker's own task line, then drop `_requests`. The dump as a whole is
diagnosis, not a workaround: it goes only when nothing reads it any more (the test harness,
`tests/support/helpers.py` `dump_tasks`, asks for it before it takes down a hung daemon).

Invariants: dumping never changes state and never awaits (it runs in one step of the loop).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from types import CoroutineType, FrameType
from typing import Any

import trio

from bucketfs.fuse import readwatch

log = logging.getLogger(__name__)

#: the bucketfs package (this module is in bucketfs/fuse/): frames from below it are "ours"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRIO_CORE = os.path.join("trio", "_core", "")
#: a frame with a local of this name (a `time.monotonic()`) shows how long it has been running
SINCE = "_since"


def _frame_of(coro: Any) -> FrameType | None:
    frame: FrameType | None = (
        getattr(coro, "cr_frame", None)
        or getattr(coro, "gi_frame", None)
        or getattr(coro, "ag_frame", None)
    )
    return frame


def _frames(coro: Any) -> Iterator[tuple[Any, FrameType]]:
    """(coroutine, its frame) from `coro` down what each awaits, while they are Python's.

    An `async with` on an `asynccontextmanager` awaits the generator's `asend` object, which
    has no frame and does not say which generator it drives: the walk goes on from the
    context manager's generator (`self.gen` in contextlib's `__aenter__`/`__aexit__`), so a
    streamed GET still shows the backend it waits in."""
    while coro is not None:
        frame = _frame_of(coro)
        if frame is None:
            return
        yield coro, frame
        awaited = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
        if awaited is not None and _frame_of(awaited) is None:
            gen = getattr(frame.f_locals.get("self"), "gen", None)
            if _frame_of(gen) is not None:
                awaited = gen
        coro = awaited


def _ours(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_PACKAGE)


def _where(frame: FrameType) -> str:
    """`file:line function`; our files by their path in the package (there are several
    `backend.py` and `store.py`), others by their name."""
    code = frame.f_code
    name = (
        os.path.relpath(code.co_filename, _PACKAGE)
        if _ours(frame)
        else os.path.basename(code.co_filename)
    )
    where = f"{name}:{frame.f_lineno} {code.co_name}"
    since = frame.f_locals.get(SINCE)
    if isinstance(since, float):
        where += f" ({time.monotonic() - since:.1f}s)"
    return where


def _chain(frames: list[FrameType]) -> str:
    """Our own frames and the innermost one outside trio's core (what is awaited: an event,
    a lock, a socket, a sleep), outermost first."""
    frames = [f for f in frames if _TRIO_CORE not in f.f_code.co_filename] or frames
    shown = [
        f
        for i, f in enumerate(frames)
        if _ours(f) or i == len(frames) - 1 or SINCE in f.f_code.co_varnames
    ]
    return " > ".join(_where(f) for f in shown)


def _tasks(task: trio.lowlevel.Task, seen: set[int], depth: int = 0) -> Iterator[str]:
    frames = []
    for coro, frame in _frames(task.coro):
        seen.add(id(coro))
        frames.append(frame)
    yield f"{'  ' * depth}{task.name}: {_chain(frames)}"
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child, seen, depth + 1)


def _requests(seen: set[int]) -> Iterator[str]:
    """Chains of our coroutines that no task's walk reached (under pyfuse3's Cython ones)."""
    live = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, CoroutineType)
        and obj.cr_frame is not None
        and id(obj) not in seen
        and _ours(obj.cr_frame)
    ]
    awaited = {id(obj.cr_await) for obj in live if obj.cr_await is not None}
    for root in live:
        if id(root) not in awaited:
            yield f"request: {_chain([frame for _, frame in _frames(root)])}"


def kernel_state(tid: int | None) -> str:
    """How the kernel sees a thread: its state, where it sleeps, its system call ("" if hidden).

    A frame alone cannot tell a thread inside a C call (SQLite, a read) from one waiting for
    the GIL: the first shows the call's number and a sleep such as `hrtimer_nanosleep`, the
    second a futex."""
    if tid is None:
        return ""
    base = f"/proc/self/task/{tid}"
    try:
        with open(f"{base}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{base}/wchan", encoding="ascii", errors="replace") as f:
            wchan = f.read().strip() or "-"
        syscall = readwatch.syscall_fields(os.getpid(), tid)[0]
    except (OSError, IndexError):
        return ""
    return f" [tid {tid} state {state} wchan {wchan} syscall {syscall}]"


def _threads() -> Iterator[str]:
    threads = {t.ident: t for t in threading.enumerate()}
    yield f"main thread{kernel_state(threading.get_native_id())}"
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue  # the loop's own thread: its tasks are above
        stack = traceback.extract_stack(frame)[-6:]
        where = " > ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in stack)
        thread = threads.get(ident)
        name = thread.name if thread is not None else ident
        state = kernel_state(thread.native_id if thread is not None else None)
        yield f"thread {name}{state}: {where}"


def dump() -> str:
    """Every task of the running trio loop (a tree), every kernel request, every thread."""
    seen: set[int] = set()
    lines = list(_tasks(trio.lowlevel.current_root_task(), seen))  # type: ignore[arg-type]
    return "\n".join([*lines, *_requests(seen), *_threads()])


async def dump_on_signal(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Log a dump at every SIGUSR1 until cancelled."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        task_status.started()
        async for _ in signals:
            log.warning("task dump (SIGUSR1):\n%s", dump())
