"""Harness of the fault tests: mounts that can be killed with SIGKILL and restarted on the same
cache directory, version-stamped file contents, bounded waits, and a TCP proxy that can sit on
the server's answers.

Owns: `CrashMount` (a `tests.support.helpers.Mount` whose cache directory stays the same across
restarts), the `crash_mounts` factory (tears every mount down, with a watchdog), `blob` and
`version_of` (every byte of version k of a file is the digit k % 10, so an object that mixes
two versions is recognised), `HoldingProxy`.

Invariants: nothing here waits without a timeout (flush and reads of a possibly stuck mount run
in a child process that is killed on timeout: a FUSE request wait is killable); no mount outlives
its test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.helpers import (
    BASE_OPTIONS,
    Mount,
    MountError,
    StoreClient,
    StoreEnv,
    dump_running_daemons,
    is_mounted,
    s3_store_env,
    stop_mounts,
    tail,
)

XATTR_PID = "user.bucketfs.pid"


XATTR_UPLOAD_STATE = "user.bucketfs.upload_state"


#: seconds after which the watchdog kills every daemon of a test, so that a request stuck in a
#: daemon fails the test with ENOTCONN instead of eating the whole run (pytest-timeout is 300)
WATCHDOG_SECONDS = 90.0


#: seconds the teardown's unmounts may take before their daemons are killed
UMOUNT_GRACE = 60.0


#: seconds a flush of everything may take in these tests (a few tens of MiB on loopback)
FLUSH_TIMEOUT = 90.0


def blob(version: int, size: int) -> bytes:
    """Version `version` of a file: `size` times the digit `version % 10`."""
    return bytes([0x30 + version % 10]) * size


def version_of(data: bytes) -> int | None:
    """The digit every byte of `data` is (None for empty data); AssertionError for a mix."""
    if not data:
        return None
    first = data[:1]
    n = data.count(first)
    assert n == len(data), (
        f"object mixes versions: {n} of {len(data)} bytes are {first!r}, "
        f"others: {sorted(set(data) - set(first))[:5]}"
    )
    return first[0] - 0x30


def describe(data: bytes) -> str:
    if not data:
        return "<empty>"
    return f"{len(data)} bytes starting {data[:1]!r} ({len(set(data))} distinct values)"


def run_child(
    code: str, *args: str, timeout: float, on_stuck: Callable[[], None] | None = None
) -> tuple[int | None, str, float]:
    """Run `python -c code args`: (exit status or None on timeout, stderr, seconds).

    On timeout the child is killed. A child whose FUSE request the daemon has already taken
    cannot die (it waits uninterruptibly for the answer): then `on_stuck` (kill the daemon)
    frees it, so the test never hangs."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        took = time.monotonic() - started
        proc.kill()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            if on_stuck is not None:
                on_stuck()
            proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        return None, err.decode(errors="replace"), took
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - started


_FLUSH = "import os, sys; os.setxattr(sys.argv[1], 'user.bucketfs.flush', b'')"


_READ_ERRNO = """
import os, sys
try:
    with open(sys.argv[1], 'rb') as f:
        f.read()
except OSError as exc:
    sys.exit(100 + (exc.errno or 0))
"""


def read_errno(
    path: Path, timeout: float, on_stuck: Callable[[], None] | None = None
) -> tuple[int | None, float]:
    """(errno of reading `path` whole, 0 if it worked, None if it did not finish; seconds)."""
    rc, err, took = run_child(_READ_ERRNO, str(path), timeout=timeout, on_stuck=on_stuck)
    if rc is None:
        return None, took
    assert rc == 0 or rc > 100, f"reader failed with {rc}: {err}"
    return (rc - 100 if rc else 0), took


def wait_for(what: str, cond: Callable[[], bool], timeout: float, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def write_file(path: Path, data: bytes, *, chunk: int = 1 << 20, fsync: bool = False) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(data), chunk):
            os.write(fd, data[start : start + chunk])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class CrashMount(Mount):
    """A `Mount` whose every daemon uses the same cache directory, so that a daemon started
    after a SIGKILL finds what the killed one left dirty."""

    cache_dir: Path | None = None

    def argv(self, cache_dir: Path) -> list[str]:
        # Mount.argv appends cache_dir=workdir/cache-N; ours must stay the same
        assert self.cache_dir is not None
        return super().argv(self.cache_dir)

    def daemon_pid(self) -> int:
        return int(os.getxattr(self.path, XATTR_PID))

    def kill(self) -> None:
        """SIGKILL the daemon (pid from the control channel), detach the stale mount."""
        assert self.proc is not None, "not running"
        pid = self.daemon_pid()
        assert pid == self.proc.pid, f"daemon pid {pid} is not the mount process {self.proc.pid}"
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False, timeout=30)
        assert not is_mounted(self.path), f"{self.path} still mounted after fusermount3 -u -z"
        self.proc = None

    def flush_all(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Everything on the server (setxattr user.bucketfs.flush on the root), bounded."""
        rc, err, took = run_child(_FLUSH, str(self.path), timeout=timeout, on_stuck=self.kill_hard)
        if rc != 0:
            what = "did not finish (daemon killed)" if rc is None else f"failed ({err.strip()})"
            raise MountError(f"flush {what} after {took:.1f}s\n{tail(self.log)}")

    def kill_hard(self) -> None:
        """Take a stuck daemon down (its pending requests fail with ENOTCONN)."""
        self._force_down()

    def upload_state(self, name: str) -> str:
        return os.getxattr(self.path / name, XATTR_UPLOAD_STATE).decode()

    @property
    def server(self) -> StoreClient:
        assert self.raw_store is not None
        return self.raw_store


class CrashMounts:
    """Starts `CrashMount`s for one test; `close()` takes every one down and reports."""

    def __init__(
        self, store_env: StoreEnv, workdir: Path, watchdog: float = WATCHDOG_SECONDS
    ) -> None:
        self.store_env = store_env
        self.workdir = workdir
        self.mounts: list[CrashMount] = []
        self.fail_on_tracebacks = True
        self.watchdog_fired = False
        self.watchdog = watchdog
        self._watchdog = threading.Timer(watchdog, self._on_watchdog)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __call__(
        self,
        options: Sequence[str] = (),
        *,
        bucket: str | None = None,
        store_env: StoreEnv | None = None,
        start: bool = True,
    ) -> CrashMount:
        env = store_env or self.store_env
        if bucket is None:
            bucket = env.new_bucket()
        n = len(self.mounts) + 1
        mount = CrashMount(
            source=env.source(bucket),
            path=self.workdir / f"mnt{n}",
            options=[*env.options, *BASE_OPTIONS, *options],
            env=env.env,
            workdir=self.workdir / f"mount{n}",
            raw_store=env.client(bucket),
            bucket=bucket,
            cache_dir=self.workdir / f"cache{n}",
        )
        self.mounts.append(mount)
        if start:
            mount.start()
        return mount

    def _on_watchdog(self) -> None:
        self.watchdog_fired = True
        dump_running_daemons(native=True)
        for mount in self.mounts:
            mount._force_down()

    def close(self) -> None:
        self._watchdog.cancel()
        # `bucketfs umount` of a stuck daemon would wait uninterruptibly: a second watchdog
        # takes the daemons down if the teardown itself hangs
        teardown = threading.Timer(UMOUNT_GRACE, self._on_watchdog)
        teardown.daemon = True
        teardown.start()
        problems = stop_mounts(self.mounts)
        teardown.cancel()
        if self.watchdog_fired:
            problems.append("watchdog killed the daemons (test or teardown stuck)")
        if self.fail_on_tracebacks:
            for mount in self.mounts:
                problems.extend(mount.tracebacks())
        if problems:
            raise MountError("\n\n".join(problems))


def open_crash_mounts(env: StoreEnv, workdir: Path) -> Iterator[CrashMounts]:
    factory = CrashMounts(env, workdir)
    try:
        yield factory
    finally:
        factory.close()


_RST = struct.pack("ii", 1, 0)


_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


class HoldingProxy:
    """A TCP proxy on loopback in front of `upstream`. `arm()` makes the next connection on
    which the server answers *frozen*: the server's bytes are read (so the server is done) but
    not passed on until `release()`. So a request reaches the server and takes effect while
    the client never learns that it did — the window between "the server stored the upload"
    and "the daemon recorded it"."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed = False
        self._reset = False
        self._wanted: Callable[[bytes], bool] = lambda _line: True
        self._last_request: dict[int, bytes] = {}
        self._frozen: set[int] = set()
        self._released = threading.Event()
        self._released.set()
        self.held_bytes = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(
        self, request: Callable[[bytes], bool] = lambda _line: True, *, reset: bool = False
    ) -> None:
        """Freeze the next connection that answers a request whose request line (b"PUT
        /bucket/key?x=y HTTP/1.1") satisfies `request`; with `reset`, drop that answer and
        close the connection instead (the client sees a reset, the server did the work)."""
        with self._lock:
            self._armed = True
            self._reset = reset
            self._wanted = request
            self._released.clear()
            self.held_bytes = 0

    def release(self) -> None:
        with self._lock:
            self._armed = False
            self._frozen.clear()
            self._released.set()

    def close(self) -> None:
        self._closed = True
        self.release()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            conn = id(client)
            threading.Thread(
                target=self._pump, args=(client, upstream, conn, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, conn, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: int, requests: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if requests:
                    if data.startswith(_METHODS):
                        self._last_request[conn] = data.split(b"\r\n", 1)[0]
                else:
                    answers_of = conn
                    with self._lock:
                        line = self._last_request.get(conn, b"")
                        if self._armed and self._wanted(line):
                            self._armed = False
                            self._frozen.add(answers_of)
                        frozen = answers_of in self._frozen
                        if frozen:
                            self.held_bytes += len(data)
                    if frozen and self._reset:
                        for sock in (src, dst):  # closed with an RST, the answer dropped
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                        return
                    if frozen:
                        while not self._released.wait(0.05):
                            if self._closed:
                                return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def proxied_env(seaweed: Any, proxy: HoldingProxy) -> StoreEnv:
    """The session's SeaweedFS as the daemon reaches it through `proxy`; the checking client
    still talks to the server directly."""
    env = s3_store_env(seaweed)
    env.options = [f"endpoint={proxy.endpoint}", f"region={seaweed.region}"]
    return env
