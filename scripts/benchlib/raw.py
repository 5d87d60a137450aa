"""The raw baseline: each workload done straight over S3 with parallel requests (boto3).

This is the practical limit of the server, not a filesystem: no FUSE, no POSIX attributes, and
the client knows every key in advance. Parallelism: 8 ranged GETs of 16 MiB in flight for big
reads, 8 multipart parts of 16 MiB for the big write, 16 requests in flight for small objects and
8 for random 4 KiB reads. Requests are counted by botocore event hooks on the client itself (the
raw baseline does not go through the counting proxy).

Invariant: results mean the same as the filesystem ones — "server" times end when the independent
store sees the data, reads check sizes, `tar_c` compares md5s.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from . import data
from .data import Sizes
from .store import Store, get_range
from .workloads import DataFiles, Metrics, edit_patch, rand_offsets

RANGE = 16 << 20
SMALL_THREADS = 16


class RawEnv(Protocol):
    sizes: Sizes
    files: DataFiles
    store: Store
    s3: Any  # a boto3 client with counting hooks
    bucket: str

    def phase(self, name: str, fn: Callable[[], Metrics]) -> None: ...


class ClientCounter:
    """Counts the requests and bytes of one boto3 client via its event hooks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("after-call.s3", self._after_call)

    def _before_send(self, request: Any, **_: Any) -> None:
        length = int(request.headers.get("Content-Length", 0) or 0)
        with self._lock:
            self.requests[request.method] = self.requests.get(request.method, 0) + 1
            self.bytes_up += length

    def _after_call(self, http_response: Any = None, **_: Any) -> None:
        if http_response is None:
            return
        length = int(http_response.headers.get("content-length", 0) or 0)
        with self._lock:
            self.bytes_down += length

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "up": self.bytes_up, "down": self.bytes_down}

    @staticmethod
    def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        req = {k: v - before["requests"].get(k, 0) for k, v in after["requests"].items()}
        req = {k: v for k, v in sorted(req.items()) if v}
        return {
            "requests": req,
            "requests_total": sum(req.values()),
            "bytes_up": after["up"] - before["up"],
            "bytes_down": after["down"] - before["down"],
        }


def _pool_map(fn: Callable[[Any], Any], items: list[Any], threads: int) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _upload_config() -> Any:
    """How the raw baseline uploads a large file: parts of RANGE, 8 in parallel."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=RANGE, multipart_chunksize=RANGE, max_concurrency=8)


def write_1g(env: RawEnv) -> None:
    size = env.sizes.big
    config = _upload_config()

    def run() -> Metrics:
        t0 = time.perf_counter()
        env.s3.upload_file(str(env.files.big_file), env.bucket, "big.bin", Config=config)
        env.store.wait_size("big.bin", size, env.sizes.timeout)
        elapsed = _since(t0)
        return {"close_s": elapsed, "server_s": elapsed, "mb_s": size / 1e6 / elapsed}

    env.phase("write_1g", run)


def _get_range(env: RawEnv, key: str, start: int, length: int) -> bytes:
    return get_range(env.s3, env.bucket, key, start, start + length)


def read_1g(env: RawEnv) -> None:
    size = env.sizes.big

    def run() -> Metrics:
        t0 = time.perf_counter()
        starts = list(range(0, size, RANGE))
        got = _pool_map(
            lambda s: len(_get_range(env, "big.bin", s, min(RANGE, size - s))), starts, 8
        )
        elapsed = _since(t0)
        if sum(got) != size:
            raise RuntimeError(f"read {sum(got)} bytes, want {size}")
        return {"time_s": elapsed, "mb_s": size / 1e6 / elapsed}

    env.phase("read_1g_cold", run)
    env.phase("read_1g_warm", run)
    env.phase("read_1g_remount", run)  # no cache to keep: the same reads again


def rand_4k(env: RawEnv) -> None:
    offsets = rand_offsets(env.sizes)

    def run() -> Metrics:
        t0 = time.perf_counter()
        got = _pool_map(lambda off: _get_range(env, "rand.bin", off, 4096), offsets, 8)
        elapsed = _since(t0)
        with open(env.files.rand_file, "rb") as f:
            for off, block in zip(offsets, got, strict=True):
                f.seek(off)
                if f.read(4096) != block:
                    raise RuntimeError(f"wrong bytes at offset {off}")
        return {"time_s": elapsed, "iops": len(offsets) / elapsed}

    env.phase("rand_4k_256m", run)
    env.phase("rand_4k_256m_cached", run)  # raw S3 has no cache: the same reads again


def _put_all(env: RawEnv, files: dict[str, bytes]) -> None:
    def put(item: tuple[str, bytes]) -> None:
        env.s3.put_object(Bucket=env.bucket, Key=item[0], Body=item[1])

    _pool_map(put, list(files.items()), SMALL_THREADS)


def small_files(env: RawEnv) -> None:
    files = data.small_files(env.sizes)

    def run() -> Metrics:
        t0 = time.perf_counter()
        _put_all(env, files)
        close_s = _since(t0)
        env.store.wait_keys("small/", files, env.sizes.timeout)
        return {"close_s": close_s, "server_s": _since(t0)}

    env.phase("small_files_2000", run)


def _list(env: RawEnv, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=prefix)
    for page in pages:
        out.extend(page.get("Contents", []))
    return out


def _tree_tool(tool: str) -> Callable[[RawEnv], None]:
    """ls -lR, find and du all come down to listing every key with its size."""

    def scenario(env: RawEnv) -> None:
        def run() -> Metrics:
            t0 = time.perf_counter()
            objs = _list(env, "tree/")
            elapsed = _since(t0)
            if len(objs) != env.sizes.tree_objects:
                raise RuntimeError(f"listed {len(objs)} keys, want {env.sizes.tree_objects}")
            return {"time_s": elapsed}

        env.phase(f"{tool}_10k_cold", run)
        env.phase(f"{tool}_10k_warm", run)
        if tool == "ls_lR":
            env.phase(f"{tool}_10k_remount", run)  # nothing kept: the same listing again

    return scenario


def stat_1000(env: RawEnv) -> None:
    keys = data.stat_keys(env.sizes)

    def run() -> Metrics:
        t0 = time.perf_counter()
        _pool_map(lambda k: env.s3.head_object(Bucket=env.bucket, Key=k), keys, SMALL_THREADS)
        return {"time_s": _since(t0)}

    env.phase("stat_1000", run)
    env.phase("stat_1000_warm", run)  # nothing kept: the same HEADs again


def untar(env: RawEnv) -> None:
    def run() -> Metrics:
        t0 = time.perf_counter()
        files: dict[str, bytes] = {}
        with tarfile.open(env.files.tar_file) as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    files[member.name] = f.read()
        _put_all(env, files)
        env.store.wait_keys("src/", env.files.source, env.sizes.timeout)
        elapsed = _since(t0)
        return {"exit_s": elapsed, "server_s": elapsed}

    env.phase("untar", run)


def tar_c(env: RawEnv) -> None:
    def run() -> Metrics:
        t0 = time.perf_counter()
        keys = [o["Key"] for o in _list(env, "src/")]

        def get(key: str) -> tuple[str, str]:
            body = env.s3.get_object(Bucket=env.bucket, Key=key)["Body"]
            try:
                return key, hashlib.md5(body.read()).hexdigest()
            finally:
                body.close()

        seen = dict(_pool_map(get, keys, SMALL_THREADS))
        elapsed = _since(t0)
        if seen != env.files.source_md5:
            raise RuntimeError("checksums differ from the source tree")
        return {"time_s": elapsed}

    env.phase("tar_c", run)


def _delete_keys(env: RawEnv, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        env.s3.delete_objects(Bucket=env.bucket, Delete={"Objects": batch, "Quiet": True})


def mv_500(env: RawEnv) -> None:
    def run() -> Metrics:
        t0 = time.perf_counter()
        keys = [o["Key"] for o in _list(env, "mvsrc/")]

        def copy(key: str) -> None:
            env.s3.copy_object(
                Bucket=env.bucket,
                Key=key.replace("mvsrc/", "mvdst/", 1),
                CopySource={"Bucket": env.bucket, "Key": key},
            )

        _pool_map(copy, keys, SMALL_THREADS)
        _delete_keys(env, keys)
        dst = [k.replace("mvsrc/", "mvdst/", 1) for k in data.mv_files(env.sizes)]
        env.store.wait_keys("mvdst/", dst, env.sizes.timeout)
        env.store.wait_gone("mvsrc/", env.sizes.timeout)
        elapsed = _since(t0)
        return {"exit_s": elapsed, "server_s": elapsed}

    env.phase("mv_500", run)


def rm_rf(env: RawEnv) -> None:
    def run() -> Metrics:
        t0 = time.perf_counter()
        _delete_keys(env, [o["Key"] for o in _list(env, "src/")])
        env.store.wait_gone("src/", env.sizes.timeout)
        elapsed = _since(t0)
        return {"exit_s": elapsed, "server_s": elapsed}

    env.phase("rm_rf", run)


def append_edit(env: RawEnv) -> None:
    want = data.after_append_edit(env.sizes)
    md5 = hashlib.md5(want).hexdigest()

    def run() -> Metrics:
        t0 = time.perf_counter()
        env.s3.put_object(Bucket=env.bucket, Key="edit.bin", Body=want)
        env.store.wait_md5("edit.bin", len(want), md5, env.sizes.timeout)
        elapsed = _since(t0)
        return {"close_s": elapsed, "server_s": elapsed}

    env.phase("append_edit", run)


def edit_1g(env: RawEnv) -> None:
    """Without a cache a client re-sends the whole object: 1 GiB with the edit applied."""
    offset, patch = edit_patch(env.sizes)
    edited = env.files.big_file.with_suffix(".edited")
    shutil.copyfile(env.files.big_file, edited)
    with open(edited, "r+b") as f:
        f.seek(offset)
        f.write(patch)
    config = _upload_config()

    def run() -> Metrics:
        t0 = time.perf_counter()
        env.s3.upload_file(str(edited), env.bucket, "edit1g.bin", Config=config)
        env.store.wait_range("edit1g.bin", env.sizes.big, offset, patch, env.sizes.timeout)
        elapsed = _since(t0)
        return {"close_s": elapsed, "server_s": elapsed}

    try:
        env.phase("edit_1m_in_1g", run)
    finally:
        edited.unlink(missing_ok=True)


RAW: dict[str, Callable[[RawEnv], None]] = {
    "write_1g": write_1g,
    "read_1g": read_1g,
    "rand_4k_256m": rand_4k,
    "small_files_2000": small_files,
    "ls_lR_10k": _tree_tool("ls_lR"),
    "find_10k": _tree_tool("find"),
    "du_10k": _tree_tool("du"),
    "stat_1000": stat_1000,
    "untar": untar,
    "tar_c": tar_c,
    "mv_500": mv_500,
    "rm_rf": rm_rf,
    "append_edit": append_edit,
    "edit_1m_in_1g": edit_1g,
}
