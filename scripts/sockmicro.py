#!/usr/bin/env python3
"""Micro-benchmark (session 18): the trio thread's CPU for one small socket write and one read.

What `bucketfs/backends/s3/pool.py` does on plain TCP: a request head written with `os.write`
on the non-blocking socket instead of trio's `SocketStream.send_all` (a cancel scope, a
conflict check and a yield to the scheduler after every send), and a response read after
`trio.lowlevel.wait_readable` with `os.read` instead of `receive_some`. A socketpair with a
thread draining (or answering) the other end; `time.thread_time` of the trio thread only.

Usage: `.venv/bin/python scripts/sockmicro.py [--count 20000]`
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import trio

MSG = b"x" * 300


def _drain(peer: socket.socket) -> None:
    while peer.recv(1 << 20):
        pass


def _answer(peer: socket.socket) -> None:
    while peer.recv(1):
        peer.sendall(MSG)


async def _write_all(fd: int, data: bytes) -> None:
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    while sent < len(data):
        await trio.lowlevel.wait_writable(fd)
        try:
            sent += os.write(fd, data[sent:])
        except BlockingIOError:
            continue


async def _read_some(fd: int) -> bytes:
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            continue


async def main(count: int) -> None:
    ours, peer = socket.socketpair()
    threading.Thread(target=_drain, args=(peer,), daemon=True).start()
    ours.setblocking(False)
    sock = trio.socket.from_stdlib_socket(ours)
    stream = trio.SocketStream(sock)
    fd = sock.fileno()
    for _ in range(3):
        t0 = time.thread_time()
        for _ in range(count):
            with trio.fail_after(10):
                await stream.send_all(MSG)
        t1 = time.thread_time()
        for _ in range(count):
            await _write_all(fd, MSG)
        t2 = time.thread_time()
        trio_us, lean_us = 1e6 * (t1 - t0) / count, 1e6 * (t2 - t1) / count
        print(f"write 300 B: send_all {trio_us:.1f} us, os.write {lean_us:.1f} us")

    ours2, peer2 = socket.socketpair()
    threading.Thread(target=_answer, args=(peer2,), daemon=True).start()
    ours2.setblocking(False)
    sock2 = trio.socket.from_stdlib_socket(ours2)
    stream2 = trio.SocketStream(sock2)
    fd2 = sock2.fileno()
    pings = max(1, count // 4)

    async def ping(read: Callable[[], Awaitable[bytes | bytearray]]) -> None:
        for _ in range(pings):
            os.write(fd2, b"p")
            got = 0
            while got < len(MSG):
                with trio.fail_after(10):
                    got += len(await read())

    for _ in range(3):
        t0 = time.thread_time()
        await ping(lambda: stream2.receive_some(65536))
        t1 = time.thread_time()
        await ping(lambda: _read_some(fd2))
        t2 = time.thread_time()
        trio_us, lean_us = 1e6 * (t1 - t0) / pings, 1e6 * (t2 - t1) / pings
        print(f"ping + read 300 B: receive_some {trio_us:.1f} us, wait + read {lean_us:.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    trio.run(main, parser.parse_args().count)
