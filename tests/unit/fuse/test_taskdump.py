"""The task dump says how the kernel sees each thread, not only its Python frame."""

from __future__ import annotations

import threading
import time

import trio

from bucketfs.fuse import taskdump


def test_kernel_state_of_a_thread_waiting_on_a_lock_is_a_futex() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="waiter")
    thread.start()
    try:
        time.sleep(0.1)
        assert thread.native_id is not None
        state = taskdump.kernel_state(thread.native_id)
        assert f"tid {thread.native_id} state S" in state
        assert "futex" in state
        assert "syscall 202" in state  # futex(2) on x86_64
    finally:
        release.set()
        thread.join()


def test_kernel_state_of_a_gone_thread_is_empty() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    assert thread.native_id is not None
    deadline = time.monotonic() + 5  # join() returns a moment before the OS thread ends
    while taskdump.kernel_state(thread.native_id) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert taskdump.kernel_state(thread.native_id) == ""
    assert taskdump.kernel_state(None) == ""


def test_dump_names_a_worker_thread_sleeping_in_c_and_the_main_thread() -> None:
    async def main() -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, time.sleep, 0.5)
            await trio.sleep(0.2)
            return taskdump.dump()

    text = trio.run(main)
    assert "main thread [tid" in text
    lines = [line for line in text.splitlines() if line.startswith("thread ")]
    assert any("syscall 230" in line and "worker_fn" in line for line in lines), text


def test_dump_says_how_long_a_frame_with_a_since_local_has_run() -> None:
    async def slow() -> None:
        _since = time.monotonic() - 42.0  # read by the dump
        await trio.sleep(10)

    async def main() -> str:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await trio.sleep(0.05)
            text = taskdump.dump()
            nursery.cancel_scope.cancel()
        return text

    text = trio.run(main)
    assert any("slow (42." in line for line in text.splitlines()), text
