"""Assembling one mount: backend, pre-flight checks, cache directory, `BucketFS` and its
services, systemd notification; the pyfuse3 session itself is `fuse/session.py`.

Owns the root nursery of the daemon. Order on start: build the backend, check that the bucket
(or the account, for an all-buckets mount) answers — every failure here is a `BucketfsError`
with a one-line message, raised before anything is mounted — then start the filesystem's
services, then hand the filesystem to `session.serve`, which mounts and calls back once the
mount is live (then `on_ready()`). Order on stop (kernel unmount, `bucketfs umount`, SIGTERM,
SIGINT): the session stops serving requests, tells systemd STOPPING, uploads every dirty file
(bounded by `DRAIN_TIMEOUT`, what is left is logged) and unmounts; then the services stop and
the backend closes.

Invariants: `on_ready` is called at most once, only after the mount is live; pyfuse3 is always
closed, even after a failure; the mountpoint is never left as a stale FUSE mount by a clean exit;
this module does not import pyfuse3 itself (only `bucketfs/fuse/` does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gc
import logging
import os
import resource
from collections.abc import Callable
from pathlib import Path

import trio

from bucketfs.app.notify import notify
from bucketfs.app.options import MountConfig
from bucketfs.backends.base import Backend
from bucketfs.core.fs import BucketFS, FsOptions
from bucketfs.errors import (
    AccessDenied,
    BucketfsError,
    BucketNotFound,
    ConfigError,
    Transient,
)
from bucketfs.fuse import session

log = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 600.0


def make_backend(cfg: MountConfig) -> Backend:
    if cfg.source.scheme == "local":
        from bucketfs.backends.local.backend import LocalBackend

        cfg.store.mkdir(parents=True, exist_ok=True)
        return LocalBackend(cfg.store)
    if cfg.source.scheme == "swift":
        from bucketfs.backends.swift.backend import SwiftBackend

        # credentials from the environment only (ST_*, OS_*): see backends/swift/auth.py
        return SwiftBackend.from_env(
            os.environ,
            auth_url=cfg.auth_url,
            region=cfg.region,
            max_connections=cfg.max_connections,
            retry_deadline=cfg.retry_timeout,
            create_tempurl_key=cfg.create_tempurl_key,
        )
    from bucketfs.backends.s3.backend import S3Backend, S3Credentials

    return S3Backend(
        cfg.endpoint,
        cfg.region,
        cfg.profile,
        path_style=cfg.path_style,
        max_connections=cfg.max_connections,
        retry_deadline=cfg.retry_timeout,
        # an attempt gets at most half the retry budget (a server that accepts but never
        # answers, e.g. stopped): uncached reads fail within about retry_timeout, and there is
        # always a second attempt on a fresh connection (pooled ones may be stale after an
        # outage)
        connect_timeout=min(10.0, max(0.5, cfg.retry_timeout / 2)),
        read_timeout=min(60.0, max(1.0, cfg.retry_timeout / 2)),
        credentials=(
            S3Credentials(cfg.access_key_id or "", cfg.secret_access_key, cfg.session_token)
            if cfg.secret_access_key is not None
            else None
        ),
    )


async def preflight(backend: Backend, cfg: MountConfig) -> None:
    """Check that the source answers, with a message a user can act on."""
    where = backend.description
    bucket = cfg.source.bucket
    try:
        with trio.fail_after(PREFLIGHT_TIMEOUT):
            if bucket is None:
                await backend.list_buckets()
            else:
                await backend.head_bucket(bucket)
    except trio.TooSlowError:
        raise Transient(f"{where} did not answer within {PREFLIGHT_TIMEOUT:.0f} s") from None
    except BucketNotFound:
        raise BucketNotFound(f"bucket '{bucket}' does not exist at {where}") from None
    except AccessDenied as exc:
        what = f"bucket '{bucket}'" if bucket else "the bucket list"
        raise AccessDenied(
            f"access to {what} at {where} denied: check the credentials ({exc})"
        ) from None
    except Transient as exc:
        raise Transient(f"cannot reach {where}: {exc}") from None


def fs_options(cfg: MountConfig) -> FsOptions:
    umask = cfg.umask & 0o777
    return FsOptions(
        uid=cfg.uid,
        gid=cfg.gid,
        file_mode=cfg.file_mode if cfg.file_mode is not None else 0o666 & ~umask,
        dir_mode=cfg.dir_mode if cfg.dir_mode is not None else 0o777 & ~umask,
        attr_timeout=cfg.attr_timeout,
        entry_timeout=cfg.entry_timeout,
        dir_timeout=cfg.dir_timeout,
        dir_attr_timeout=cfg.dir_attr_timeout,
        negative_timeout=cfg.negative_timeout,
        read_only=cfg.ro,
        part_size=cfg.part_size,
        block_size=cfg.block_size,
        cache_size=cfg.cache_size,
        writeback_delay=cfg.writeback_delay,
        upload_defer=cfg.upload_defer,
        noversions=cfg.noversions,
        url_ttl=cfg.url_ttl,
        max_dirty=cfg.max_dirty,
        transfers=cfg.transfers,
        upload_parts=cfg.upload_parts,
        meta_cache_size=cfg.meta_cache_size,
        attrs=cfg.attrs,
        early_parts=cfg.early_parts,
    )


def session_options(cfg: MountConfig) -> session.SessionOptions:
    return session.SessionOptions(
        mountpoint=cfg.mountpoint,
        fsname=str(cfg.fsname or cfg.source),
        allow_other=cfg.allow_other,
        read_only=cfg.ro,
        debug=cfg.debug,
        max_nodes=cfg.max_nodes,
    )


def _cache_dir(cfg: MountConfig) -> Path:
    path = cfg.cache_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot use cache directory {path}: {exc}") from exc
    return path


STATUS_INTERVAL = 10.0


async def _report_status(fs: BucketFS, what: str) -> None:
    """systemd's STATUS= line: how much is waiting to be uploaded (only while under systemd)."""
    last = ""
    while True:
        status = fs.status()
        line = f"mounted {what}; {status['dirty_files']} files ({status['dirty_bytes']} bytes) "
        line += "not uploaded yet"
        if status["failed"]:
            line += f", {len(status['failed'])} failing"  # type: ignore[arg-type]
        if line != last:
            notify(STATUS=line)
            last = line
        await trio.sleep(STATUS_INTERVAL)


async def _serve(cfg: MountConfig, on_ready: Callable[[], None]) -> None:
    if not cfg.debug:
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
    # botocore's credential chain may block (files, instance metadata): not in the event loop
    backend = await trio.to_thread.run_sync(make_backend, cfg)
    try:
        await preflight(backend, cfg)
        fs = BucketFS(
            backend,
            bucket=cfg.source.bucket,
            prefix=cfg.source.prefix,
            options=fs_options(cfg),
            cache_dir=_cache_dir(cfg),
        )
        what = str(cfg.fsname or cfg.source)
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run)

            def mounted() -> None:
                log.info("mounted %s on %s", what, cfg.mountpoint)
                on_ready()
                if os.environ.get("NOTIFY_SOCKET"):  # only systemd reads these lines
                    nursery.start_soon(_report_status, fs, what)

            def stopping() -> None:
                pending = fs.status()["dirty_bytes"] if fs.ready else 0
                notify(STOPPING=1, STATUS=f"uploading {pending} bytes before unmounting")

            await session.serve(
                fs,
                session_options(cfg),
                drain_timeout=DRAIN_TIMEOUT,
                on_mounted=mounted,
                on_stopping=stopping,
            )
            nursery.cancel_scope.cancel()
        log.info("unmounted %s", cfg.mountpoint)
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()


#: glibc's mallopt() parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: buffers of this size or more (upload parts, fetched runs) get their own mapping, returned
#: to the system when freed
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20


def limit_heap_retention() -> None:
    """Keep glibc from holding on to freed upload and download buffers.

    By default glibc raises its mmap threshold to the size of each large block freed, so after
    the first 16 MiB part every later one comes from a heap (one per thread: parts are read in
    worker threads) and its memory stays with the process: writing 1 GiB peaked at 211-227 MiB
    of RSS, with these settings at 115 MiB (time within the machine's noise). No-op off glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


#: the cyclic garbage collector's thresholds in the daemon (Python's default: 700, 10, 10)
GC_THRESHOLDS = (100_000, 50, 10)


def collect_less_often() -> None:
    """Run Python's cyclic garbage collector less often than its default.

    The daemon keeps many long-lived objects (listings, the inode table, reserved numbers,
    file names of expired listings), and every 700 allocations start a collection: the older
    generations' ones walk all of them. A large walk pays it: `find` over 1.1M keys took
    20.1-23.1 s by default and 16.9-20.2 s with these thresholds, `ls` of 100,000 names after
    it 1.82-1.94 s against 1.43-1.70 s (session 18, docs/maintainers/performance.md). Memory
    is still freed by reference counting as before; only garbage in reference cycles waits
    longer (at most ~100,000 allocations for the youngest generation), and full collections
    still run (every 10 of the middle generation's)."""
    gc.set_threshold(*GC_THRESHOLDS)


#: the open files limit is raised at most this far when the hard limit is unlimited (Linux's
#: default fs.nr_open)
NOFILE_CEILING = 1 << 20


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit (logged), where allowed.

    The cache keeps few descriptors open (cache/datafiles.py), but connections, the index and
    the local store's files add up, and the soft limit is often 1024 (systemd's default for
    services, a shell's `ulimit -n`) while the hard limit allows far more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.debug("open files limit: %s (hard %s)", soft, hard)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
        return
    log.info("raised the open files limit from %d to %d", soft, target)


def serve(cfg: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount and serve until unmounted. Raises BucketfsError before `on_ready` on failure."""
    limit_heap_retention()
    collect_less_often()
    raise_open_files_limit()
    try:
        trio.run(_serve, cfg, on_ready)
    except BucketfsError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(f"{cfg.mountpoint}: stale mount, run 'bucketfs umount'") from exc
        raise
