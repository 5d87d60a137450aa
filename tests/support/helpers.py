"""Shared harness for the kernel-level suites (`tests/fuse/`, `tests/model/`).

Owns: `StoreClient`, an independent synchronous client that checks what is really in a bucket
(boto3 for S3, `LocalBackend` for the local store); `FlushingStore`, the same after `bucketfs
flush` (uploads are write-back: close does not wait for them); `Mount`, one `bucketfs mount
--foreground` daemon in a subprocess; and `MountFactory`, which starts mounts for one test and
tears every one of them down.

Invariants: no mount outlives its test (`MountFactory.close` unmounts with `bucketfs umount`,
falls back to `fusermount3 -u -z` plus SIGKILL, and always reaps the daemon); a watchdog kills
every daemon of a test shortly before pytest-timeout would fire, so a hung FUSE request turns into
ENOTCONN and a readable failure instead of a process stuck in the kernel; every mount gets a
fresh cache directory, so a remount proves persistence through the store, not through a cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from bucketfs.app.cli import cmd_umount
from bucketfs.errors import BucketfsError

if TYPE_CHECKING:
    from bucketfs.backends.base import Backend
    from tests.support.servers import SeaweedServer

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: seconds a mount may take to appear
MOUNT_TIMEOUT = 30.0
#: seconds after which the watchdog kills a test's daemons (pytest-timeout is 300)
WATCHDOG_SECONDS = 250.0
#: options of every test mount: a failing store fails an operation in seconds, not a minute
BASE_OPTIONS = ("retry_timeout=20",)
#: the control channel of a mount (bucketfs/app/client.py): flush below a path, status report
XATTR_FLUSH = "user.bucketfs.flush"
XATTR_STATUS = "user.bucketfs.status"
#: how many lines of a daemon log to show when something fails
LOG_TAIL_LINES = 150


class StoreError(Exception):
    """The store refused a request made by the checking client."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class MountError(Exception):
    """A mount did not come up, or did not go away cleanly."""


# --- the independent client ------------------------------------------------------------------


class StoreClient(ABC):
    """Synchronous view of one bucket, independent of the mount under test."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    @abstractmethod
    def for_bucket(self, bucket: str) -> StoreClient:
        """The same store, bound to another bucket."""

    @abstractmethod
    def create_bucket(self) -> None: ...

    @abstractmethod
    def delete_bucket(self) -> None: ...

    @abstractmethod
    def list_buckets(self) -> list[str]: ...

    @abstractmethod
    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def head(self, key: str) -> tuple[int, dict[str, str]]:
        """(size, user metadata with lower-case keys)."""

    @abstractmethod
    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (no delimiter), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except StoreError as exc:
            if exc.missing:
                return False
            raise
        return True

    def bucket_exists(self) -> bool:
        return self.bucket in self.list_buckets()

    def open_uploads(self) -> list[str]:
        """The keys of the multipart uploads started and neither completed nor aborted."""
        raise NotImplementedError


class S3StoreClient(StoreClient):
    def __init__(self, server: SeaweedServer, bucket: str, client: Any = None) -> None:
        super().__init__(bucket)
        self.server = server
        self.client = client if client is not None else server.client()

    def for_bucket(self, bucket: str) -> S3StoreClient:
        return S3StoreClient(self.server, bucket, self.client)

    def open_uploads(self) -> list[str]:
        """ListMultipartUploads (SeaweedFS lists the uploads in progress)."""
        with self._errors("list uploads"):
            found = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return sorted(str(u["Key"]) for u in found)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            missing = code in {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
            raise StoreError(f"{what}: {exc}", missing=missing) from exc

    def create_bucket(self) -> None:
        with self._errors(f"create_bucket {self.bucket}"):
            self.client.create_bucket(Bucket=self.bucket)

    def delete_bucket(self) -> None:
        with self._errors(f"delete_bucket {self.bucket}"):
            self.client.delete_bucket(Bucket=self.bucket)

    def list_buckets(self) -> list[str]:
        with self._errors("list_buckets"):
            return sorted(b["Name"] for b in self.client.list_buckets().get("Buckets", []))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        with self._errors(f"put {key!r}"):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, Metadata=dict(metadata or {})
            )

    def get(self, key: str) -> bytes:
        with self._errors(f"get {key!r}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def head(self, key: str) -> tuple[int, dict[str, str]]:
        with self._errors(f"head {key!r}"):
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        meta = {str(k).lower(): str(v) for k, v in resp.get("Metadata", {}).items()}
        return int(resp["ContentLength"]), meta

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        with self._errors(f"list {prefix!r}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                out.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)


class LocalStoreClient(StoreClient):
    """The local store through `LocalBackend` (backends/local), one `trio.run` a call.

    Safe to use from worker threads: each call builds and closes its own backend.
    """

    def __init__(self, root: Path, bucket: str) -> None:
        super().__init__(bucket)
        self.root = root

    def for_bucket(self, bucket: str) -> LocalStoreClient:
        return LocalStoreClient(self.root, bucket)

    def open_uploads(self) -> list[str]:
        """The upload directories of the bucket (`<root>/<bucket>/uploads/<id>/`): ids."""
        uploads = self.root / self.bucket / "uploads"
        return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []

    def _run(self, what: str, fn: Callable[[Backend], Awaitable[T]]) -> T:
        from bucketfs.backends.local.backend import LocalBackend
        from bucketfs.errors import BackendError, NotFound

        async def main() -> T:
            backend = LocalBackend(self.root)
            try:
                return await fn(backend)
            finally:
                await backend.aclose()

        try:
            return trio.run(main)
        except NotFound as exc:
            raise StoreError(f"{what}: {exc!r}", missing=True) from exc
        except BackendError as exc:
            raise StoreError(f"{what}: {exc!r}") from exc

    def create_bucket(self) -> None:
        self._run(f"create_bucket {self.bucket}", lambda b: b.create_bucket(self.bucket))

    def delete_bucket(self) -> None:
        self._run(f"delete_bucket {self.bucket}", lambda b: b.delete_bucket(self.bucket))

    def list_buckets(self) -> list[str]:
        async def names(b: Backend) -> list[str]:
            return sorted(info.name for info in await b.list_buckets())

        return self._run("list_buckets", names)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        from bucketfs.types import WriteOptions

        opts = WriteOptions(metadata=dict(metadata or {}))
        self._run(f"put {key!r}", lambda b: b.put(self.bucket, key, data, opts))

    def get(self, key: str) -> bytes:
        return self._run(f"get {key!r}", lambda b: b.get(self.bucket, key))

    def head(self, key: str) -> tuple[int, dict[str, str]]:
        async def head(b: Backend) -> tuple[int, dict[str, str]]:
            info = await b.head(self.bucket, key)
            return info.size, {k.lower(): v for k, v in info.metadata.items()}

        return self._run(f"head {key!r}", head)

    def keys(self, prefix: str = "") -> list[str]:
        async def walk(b: Backend) -> list[str]:
            out: list[str] = []
            token: str | None = None
            while True:
                page = await b.list_page(self.bucket, prefix, delimiter=None, token=token)
                out.extend(obj.key for obj in page.objects)
                token = page.next_token
                if token is None:
                    return sorted(out)

        return self._run(f"list {prefix!r}", walk)

    def delete(self, key: str) -> None:
        self._run(f"delete {key!r}", lambda b: b.delete(self.bucket, key))


class FlushingStore(StoreClient):
    """A `StoreClient` that first makes the mount upload everything pending (`bucketfs flush`),
    so a check sees what the server holds once write-back has caught up. Close does not wait
    for the upload (README, "What close and fsync guarantee"); tests of when an upload happens
    use `Mount.raw_store` instead."""

    def __init__(self, inner: StoreClient, flush: Callable[[], None]) -> None:
        super().__init__(inner.bucket)
        self.inner = inner
        self._flush = flush

    def for_bucket(self, bucket: str) -> StoreClient:
        return FlushingStore(self.inner.for_bucket(bucket), self._flush)

    def create_bucket(self) -> None:
        self.inner.create_bucket()

    def delete_bucket(self) -> None:
        self.inner.delete_bucket()

    def list_buckets(self) -> list[str]:
        self._flush()
        return self.inner.list_buckets()

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        self.inner.put(key, data, metadata)

    def get(self, key: str) -> bytes:
        self._flush()
        return self.inner.get(key)

    def head(self, key: str) -> tuple[int, dict[str, str]]:
        self._flush()
        return self.inner.head(key)

    def keys(self, prefix: str = "") -> list[str]:
        self._flush()
        return self.inner.keys(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


# --- where the stores live -------------------------------------------------------------------

_bucket_counter = 0


def new_bucket_name(prefix: str = "fuse") -> str:
    """A fresh valid bucket name (lower-case, 3-63 chars, unique per process and time)."""
    global _bucket_counter
    _bucket_counter += 1
    return f"{prefix}-{os.getpid()}-{_bucket_counter}-{int(time.time() * 1000) % 1_000_000}"


@dataclass
class StoreEnv:
    """One kind of store as a test sees it: how to mount it and how to check it."""

    kind: str  # "local" | "s3"
    #: mount options that point the daemon at the store (endpoint=, region=, store=)
    options: list[str]
    #: environment of the daemon (credentials for S3)
    env: dict[str, str]
    _client: Callable[[str], StoreClient]

    @property
    def scheme(self) -> str:
        return f"{self.kind}://"

    def client(self, bucket: str) -> StoreClient:
        return self._client(bucket)

    def new_bucket(self) -> str:
        name = new_bucket_name()
        self.client(name).create_bucket()
        return name

    def source(self, bucket: str | None, prefix: str = "") -> str:
        if bucket is None:
            return self.scheme
        return f"{self.scheme}{bucket}" + (f"/{prefix.strip('/')}" if prefix else "")


def local_store_env(root: Path) -> StoreEnv:
    root.mkdir(parents=True, exist_ok=True)
    return StoreEnv(
        kind="local",
        options=[f"store={root}"],
        env=dict(os.environ),
        _client=lambda bucket: LocalStoreClient(root, bucket),
    )


def s3_store_env(server: SeaweedServer) -> StoreEnv:
    shared = server.client()
    return StoreEnv(
        kind="s3",
        options=[f"endpoint={server.endpoint}", f"region={server.region}"],
        env=server.env(),
        _client=lambda bucket: S3StoreClient(server, bucket, shared),
    )


def local_or_s3_env(request: Any, tmp_path: Path) -> StoreEnv:
    """The store of a test parametrized over ["local", "s3"] (the session's SeaweedFS)."""
    if request.param == "s3":
        return s3_store_env(request.getfixturevalue("seaweed"))
    return local_store_env(tmp_path / "store")


# --- one mount ---------------------------------------------------------------------------------


def is_mounted(path: Path) -> bool:
    """Whether `path` is a mount point, from /proc/self/mountinfo (never blocks on FUSE)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            mountpoint = fields[4].encode().decode("unicode_escape")
            if mountpoint == target:
                return True
    return False


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


#: the mounts whose daemon this test session started and has not stopped, by id()
_running: dict[int, Mount] = {}


def dump_running_daemons(*, native: bool = False) -> None:
    """Every running daemon logs what its tasks and threads wait on (before a test that
    failed or hung takes them down: the log then says where a stuck request was parked).
    With `native` (a hang), also print each daemon's C stacks, taken twice a second apart:
    a thread in SQLite, in a system call or waiting for the GIL only shows there."""
    for mount in list(_running.values()):
        mount.dump_tasks()
        if native and mount.proc is not None:
            print(native_stacks(mount.proc.pid))
            time.sleep(1)
            print(native_stacks(mount.proc.pid))


def native_stacks(pid: int) -> str:
    """`py-spy dump --native` of a process: every thread's Python and C frames."""
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if py_spy is None:
        return f"===== no py-spy next to {sys.executable}: no native stacks of {pid} ====="
    try:
        done = subprocess.run(
            [py_spy, "dump", "--native", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"===== py-spy dump of {pid} timed out ====="
    return f"===== native stacks of {pid} (py-spy) =====\n{done.stdout}{done.stderr}"


@dataclass
class Mount:
    """One `bucketfs mount --foreground` daemon; `path` is the mount point."""

    source: str
    path: Path
    options: list[str]
    env: dict[str, str]
    workdir: Path
    #: the independent client for the mounted bucket, without flushing first
    raw_store: StoreClient | None = None
    bucket: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    generation: int = 0
    #: a command the daemon runs under, e.g. ["prlimit", "--nofile=256:256", "--"] (it must
    #: exec the daemon, so that `proc.pid` is the daemon's)
    wrapper: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.logs[-1]

    @property
    def store(self) -> StoreClient | None:
        """The independent client for the mounted bucket; every read flushes the mount first."""
        if self.raw_store is None:
            return None
        return FlushingStore(self.raw_store, self.flush)

    def flush(self, path: Path | None = None) -> None:
        """`bucketfs flush`: return once everything under `path` (default: the whole mount)
        is on the server. A no-op when not mounted (after stop, nothing is pending)."""
        if self.proc is None:
            return
        target = path if path is not None else self.path
        try:
            os.setxattr(target, XATTR_FLUSH, b"", follow_symlinks=False)
        except OSError as exc:
            raise MountError(f"flush of {target} failed: {exc}\n{tail(self.log)}") from exc

    def status(self) -> dict[str, Any]:
        """`bucketfs status --json`: what the daemon says is pending."""
        import json

        data: dict[str, Any] = json.loads(os.getxattr(self.path, XATTR_STATUS))
        return data

    def argv(self, cache_dir: Path) -> list[str]:
        opts = [*self.options, f"cache_dir={cache_dir}"]
        if os.environ.get("BUCKETFS_TEST_DEBUG"):
            opts.append("debug")
        return [
            *self.wrapper,
            sys.executable,
            "-m",
            "bucketfs",
            "mount",
            "--foreground",
            self.source,
            str(self.path),
            "-o",
            ",".join(opts),
        ]

    def start(self, *, reuse_cache: bool = False) -> None:
        """Mount; with a fresh cache directory unless `reuse_cache` (the last one's)."""
        assert self.proc is None, "already mounted"
        self.generation += 1
        if reuse_cache and self.generation > 1:
            cache_dir = self.workdir / f"cache-{self.generation - 1}"
            cache_dir.rename(self.workdir / f"cache-{self.generation}")
        cache_dir = self.workdir / f"cache-{self.generation}"
        cache_dir.mkdir(parents=True, exist_ok=reuse_cache)
        self.path.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"daemon-{self.generation}.log"
        self.logs.append(log)
        argv = self.argv(cache_dir)
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(log, "wb") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            _running[id(self)] = self
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                _running.pop(id(self), None)
                raise MountError(f"mount exited with {rc} before mounting:\n{tail(log)}")
            if time.monotonic() > deadline:
                self._force_down()
                raise MountError(f"not mounted after {MOUNT_TIMEOUT}s:\n{tail(log)}")
            time.sleep(0.02)
        if not os.path.ismount(self.path):
            self._force_down()
            raise MountError(f"in mountinfo but os.path.ismount is false:\n{tail(log)}")

    def stop(self) -> None:
        """`bucketfs umount`, then the daemon must exit 0; otherwise force it down and raise."""
        if self.proc is None:
            return
        problems: list[str] = []
        # `bucketfs umount`'s own code, run here rather than in a new interpreter (which cost
        # ~0.4 s per mount, minutes over the suite); tests/fuse/test_cli.py runs the command
        try:
            cmd_umount(str(self.path))
        except BucketfsError as exc:
            problems.append(f"bucketfs umount failed: {exc}")
        try:
            rc = self.proc.wait(timeout=30)
            if rc != 0:
                problems.append(f"daemon exited with {rc}")
        except subprocess.TimeoutExpired:
            problems.append("daemon still running 30s after bucketfs umount")
        if is_mounted(self.path):
            problems.append("still mounted after bucketfs umount")
        if problems:
            self._force_down()
            raise MountError("; ".join(problems) + f"\ndaemon log:\n{tail(self.log)}")
        self.proc = None
        _running.pop(id(self), None)

    def dump_tasks(self, timeout: float = 5.0) -> None:
        """Have a live daemon log what each of its tasks and threads waits on
        (bucketfs/fuse/taskdump.py); returns once the dump is in the log or after `timeout`."""
        proc = self.proc
        if proc is None or proc.poll() is not None or not is_mounted(self.path):
            return  # not serving (yet): SIGUSR1 before its handler is set would kill it
        before = self.log.read_text(errors="replace").count("task dump (SIGUSR1)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count("task dump (SIGUSR1)") > before:
                time.sleep(0.1)  # the rest of the dump's lines
                return
            time.sleep(0.05)

    def _force_down(self) -> None:
        """Kill the daemon (pending requests fail with ENOTCONN), detach the mount, reap."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False, timeout=30)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self.proc = None
        _running.pop(id(self), None)

    def remount(self) -> None:
        """Unmount (uploads pending data) and mount again with the same options and a fresh
        cache directory, so what is read afterwards comes from the store."""
        self.stop()
        self.start()

    def tracebacks(self) -> list[str]:
        """Python tracebacks in the daemon logs: the adapter logs one only for a bug."""
        found: list[str] = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Traceback (most recent call last)" in text:
                found.append(f"{log.name}:\n{tail(log, 60)}")
        return found


class MountFactory:
    """Starts mounts for one test; `close()` tears every one down and reports problems."""

    def __init__(self, store_env: StoreEnv, workdir: Path) -> None:
        self.store_env = store_env
        self.workdir = workdir
        self.mounts: list[Mount] = []
        #: set False in a test that provokes server errors and accepts logged tracebacks
        self.fail_on_tracebacks = True
        self.watchdog_fired = False
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._on_watchdog)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __call__(
        self,
        bucket: str | None = None,
        *,
        prefix: str = "",
        options: Sequence[str] = (),
        new_bucket: bool = True,
        wrapper: Sequence[str] = (),
    ) -> Mount:
        """Mount `bucket` (a fresh one if None and `new_bucket`), or the whole store (every
        bucket a directory) if `bucket` is None and `new_bucket` is False."""
        if bucket is None and new_bucket:
            bucket = self.store_env.new_bucket()
        n = len(self.mounts) + 1
        mount = Mount(
            source=self.store_env.source(bucket, prefix),
            path=self.workdir / f"mnt{n}",
            options=[*self.store_env.options, *BASE_OPTIONS, *options],
            env=self.store_env.env,
            workdir=self.workdir / f"mount{n}",
            raw_store=self.store_env.client(bucket) if bucket is not None else None,
            bucket=bucket,
            wrapper=list(wrapper),
        )
        self.mounts.append(mount)
        mount.start()
        return mount

    def _on_watchdog(self) -> None:
        self.watchdog_fired = True
        dump_running_daemons(native=True)
        for mount in self.mounts:
            mount._force_down()

    def close(self) -> None:
        self._watchdog.cancel()
        problems = stop_mounts(self.mounts)
        if self.watchdog_fired:
            problems.append(f"watchdog killed the daemons after {WATCHDOG_SECONDS}s")
        if self.fail_on_tracebacks:
            for mount in self.mounts:
                problems.extend(mount.tracebacks())
        if problems:
            raise MountError("\n\n".join(problems))


def stop_mounts(mounts: Sequence[Mount]) -> list[str]:
    """Stop every mount, forcing it down whatever happened, and print each daemon's log;
    returns what went wrong on the way."""
    problems: list[str] = []
    for mount in mounts:
        try:
            mount.stop()
        except MountError as exc:
            problems.append(f"{mount.source} on {mount.path}: {exc}")
        finally:
            mount._force_down()
    for mount in mounts:
        print(f"===== daemon logs of {mount.source} =====")
        for log in mount.logs:
            print(f"--- {log} ---\n{tail(log)}")
    return problems


@contextlib.contextmanager
def mount_factory_for(store_env: StoreEnv, workdir: Path) -> Iterator[MountFactory]:
    factory = MountFactory(store_env, workdir)
    try:
        yield factory
    finally:
        factory.close()


def where_stuck(pid: int) -> str:
    """What a process (and each of its threads and children) is doing, from /proc: state,
    the kernel function it sleeps in, its current syscall and kernel stack; plus a second of
    `strace` when it is installed. For a tool that timed out on the mount."""
    out: list[str] = []
    tids = sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}") else []
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        fields: list[str] = []
        for name in ("stat", "wchan", "syscall", "stack"):
            try:
                text = Path(base, name).read_text(errors="replace").strip()
            except OSError as exc:
                text = f"<{exc.strerror}>"
            if name == "stat":  # "pid (comm) S ...": the name and the state
                text = text[text.find("(") : text.rfind(")") + 3]
            fields.append(f"{name}: {text}")
        out.append(f"task {tid}: " + "\n  ".join(fields))
        with contextlib.suppress(OSError):
            for child in Path(base, "children").read_text().split():
                out.append(f"child {child} of {tid}:\n" + where_stuck(int(child)))
    import shutil

    if shutil.which("strace") and tids:
        trace = subprocess.run(
            ["timeout", "-s", "INT", "1", "strace", "-f", "-tt", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = trace.stderr.splitlines()
        out.append(f"strace (1 s, {len(lines)} lines, first 40):\n" + "\n".join(lines[:40]))
    return "\n".join(out)


def run_tool(
    argv: Sequence[str], timeout: float, *, input: str | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(argv, input=input, capture_output=True, text=True)`; on timeout the
    assertion error says where the tool was stuck (`where_stuck`) before it is killed."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        stuck = where_stuck(proc.pid)
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        raise AssertionError(f"{list(argv)} did not finish in {timeout}s:\n{stuck}") from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def require_tool(name: str) -> str:
    """The path of a system tool; fail (never skip) if it is missing."""
    import shutil

    found = shutil.which(name)
    if found is None:
        import pytest

        pytest.fail(f"{name} is not installed: scripts/setup installs it")
    return found


def store_keeps_marker_metadata(store: StoreClient) -> bool:
    """Whether the store keeps user metadata on a `dir/` marker (SeaweedFS 4.x drops it)."""
    key = "zz-probe-marker-metadata/"
    store.put(key, b"", {"mode": str(stat.S_IFDIR | 0o755)})
    try:
        return store.head(key)[1].get("mode") == str(stat.S_IFDIR | 0o755)
    finally:
        store.delete(key)
