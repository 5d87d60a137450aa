"""What is measured through a mounted filesystem (and on the local disk).

A `Scenario` is one fresh mount (or a fresh local directory) on which one or more results are
measured, e.g. `read_1g` measures `read_1g_cold` and then `read_1g_warm` on the same mount. Each
scenario names the data it needs: a shared read-only `dataset` (populated once per system and
reused by every repetition) or a `fresh` per-repetition bucket filled by `prepare`.

Invariants: every phase checks what it read or wrote (sizes, listings, md5s) and raises on a
mismatch, so a wrong answer is a failure and never a fast time; "on the server" is decided by the
independent `Store`, never by the filesystem under test. Result names are stable: they key the
JSON and docs/bench.md.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import data
from .data import Sizes
from .store import Store

Metrics = dict[str, float]


@dataclass
class DataFiles:
    """Generated once per work directory and shared by every system."""

    sizes: Sizes
    big_file: Path
    rand_file: Path
    tar_file: Path
    source: dict[str, bytes]
    source_md5: dict[str, str]

    @classmethod
    def generate(cls, sizes: Sizes, where: Path) -> DataFiles:
        where.mkdir(parents=True, exist_ok=True)
        big = where / f"big-{sizes.big}.bin"
        rand = where / f"rand-{sizes.rand_object}.bin"
        tar = where / f"src-{sizes.src_files}.tar"
        data.write_big_file(big, sizes.big, seed=1)
        data.write_big_file(rand, sizes.rand_object, seed=3)
        source = data.source_tree(sizes.src_files)
        data.write_tar(tar, source)
        return cls(sizes, big, rand, tar, source, data.md5s(source))


class Env(Protocol):
    """What a scenario gets from the runner (see runner.FsEnv and runner.RawEnv)."""

    sizes: Sizes
    files: DataFiles
    store: Store

    def mount(self, *, cold: bool) -> Path: ...

    def phase(self, name: str, fn: Callable[[], Metrics]) -> None: ...


@dataclass(frozen=True)
class Scenario:
    name: str
    results: tuple[str, ...]
    run: Callable[[Env], None]
    dataset: str | None = None  # shared read-only data: "bigread", "tree" or "src"
    prepare: Callable[[Store, DataFiles], None] | None = None  # fills a fresh bucket per rep

    def selected(self, names: set[str] | None) -> bool:
        return names is None or self.name in names or bool(names & set(self.results))


def populate_dataset(name: str, store: Store, files: DataFiles) -> None:
    if name == "bigread":
        store.put_file("big.bin", files.big_file)
        store.put_file("rand.bin", files.rand_file)
    elif name == "tree":
        store.put_many(data.tree_objects(files.sizes))
    elif name == "src":
        store.put_many(files.source)
    else:
        raise ValueError(name)


# --- the phases --------------------------------------------------------------------------------


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False, **kw)
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{cmd[0]} exited {out.returncode}: {' | '.join(err[:3])}")
    return out


def write_1g(env: Env) -> None:
    root = env.mount(cold=False)
    size = env.sizes.big
    blocks = data.big_blocks()

    def run() -> Metrics:
        t0 = time.perf_counter()
        with open(root / "big.bin", "wb", buffering=0) as f:
            for i in range(size // data.MiB):
                f.write(blocks[i % len(blocks)])
        close_s = _since(t0)
        env.store.wait_size("big.bin", size, env.sizes.timeout)
        server_s = _since(t0)
        return {"close_s": close_s, "server_s": server_s, "mb_s": size / 1e6 / server_s}

    env.phase("write_1g", run)


def _read_all(path: Path, size: int) -> Metrics:
    buf = bytearray(data.MiB)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    elapsed = _since(t0)
    if total != size:
        raise RuntimeError(f"read {total} bytes, want {size}")
    return {"time_s": elapsed, "mb_s": size / 1e6 / elapsed}


def read_1g(env: Env) -> None:
    root = env.mount(cold=True)
    env.phase("read_1g_cold", lambda: _read_all(root / "big.bin", env.sizes.big))
    env.phase("read_1g_warm", lambda: _read_all(root / "big.bin", env.sizes.big))
    root = env.remount()
    env.phase("read_1g_remount", lambda: _read_all(root / "big.bin", env.sizes.big))


def rand_offsets(sizes: Sizes) -> list[int]:
    rng = random.Random(60)
    return [rng.randrange(sizes.rand_object // 4096) * 4096 for _ in range(sizes.rand_reads)]


def rand_4k(env: Env) -> None:
    """Random reads cold (fresh mount, dropped caches), then in the cached file: read whole
    once through the mount, kernel page cache dropped, the same reads in another order."""
    root = env.mount(cold=True)
    offsets = rand_offsets(env.sizes)

    def run(order: list[int]) -> Metrics:
        got: list[bytes] = []
        t0 = time.perf_counter()
        fd = os.open(root / "rand.bin", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for off in order:
                got.append(os.pread(fd, 4096, off))
        finally:
            os.close(fd)
        elapsed = _since(t0)
        with open(env.files.rand_file, "rb") as f:
            for off, block in zip(order, got, strict=True):
                f.seek(off)
                if f.read(4096) != block:
                    raise RuntimeError(f"wrong bytes at offset {off}")
        return {"time_s": elapsed, "iops": len(order) / elapsed}

    env.phase("rand_4k_256m", lambda: run(offsets))
    _read_all(root / "rand.bin", env.sizes.rand_object)
    env.bench.drop_caches()
    env.phase("rand_4k_256m_cached", lambda: run(offsets[::-1]))


def small_files(env: Env) -> None:
    root = env.mount(cold=False)
    files = data.small_files(env.sizes)

    def run() -> Metrics:
        made: set[Path] = set()
        t0 = time.perf_counter()
        for key, body in files.items():
            path = root / key
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            with open(path, "wb") as f:
                f.write(body)
        close_s = _since(t0)
        env.store.wait_keys("small/", files, env.sizes.timeout)
        return {"close_s": close_s, "server_s": _since(t0)}

    env.phase("small_files_2000", run)


def _tree_tool(tool: str) -> Callable[[Env], None]:
    """ls -lR, find or du over the tree, first on a fresh mount with dropped caches, then again."""

    def scenario(env: Env) -> None:
        root = env.mount(cold=True)
        n = env.sizes.tree_objects
        cmd = {
            "ls_lR": ["ls", "-lR", str(root / "tree")],
            "find": ["find", str(root / "tree")],
            "du": ["du", "-s", str(root / "tree")],
        }[tool]

        def run() -> Metrics:
            t0 = time.perf_counter()
            out = _run(cmd, env.sizes.timeout).stdout
            elapsed = _since(t0)
            lines = out.splitlines()
            if tool == "ls_lR" and (got := sum(1 for x in lines if x.startswith(b"-"))) != n:
                raise RuntimeError(f"ls -lR listed {got} files, want {n}")
            if tool == "find" and (got := len(lines)) != n + env.sizes.tree_dirs + 1:
                raise RuntimeError(f"find printed {got} paths, want {n + env.sizes.tree_dirs + 1}")
            return {"time_s": elapsed}

        env.phase(f"{tool}_10k_cold", run)
        env.phase(f"{tool}_10k_warm", run)
        if tool == "ls_lR":  # what a mount keeps for the next one (issue 14 item 5)
            root = env.remount()
            cmd[-1] = str(root / "tree")
            env.phase(f"{tool}_10k_remount", run)

    return scenario


#: seconds between a cold and a warm `stat` run: past the default timeouts (1 s)
WARM_AFTER = 1.1


def stat_1000(env: Env) -> None:
    root = env.mount(cold=True)
    keys = data.stat_keys(env.sizes)
    want = {k: len(v) for k, v in data.tree_objects(env.sizes).items()}

    def run() -> Metrics:
        sizes = []
        t0 = time.perf_counter()
        for key in keys:
            sizes.append(os.stat(root / key).st_size)
        elapsed = _since(t0)
        for key, got in zip(keys, sizes, strict=True):
            if got != want[key]:
                raise RuntimeError(f"{key}: st_size {got}, want {want[key]}")
        return {"time_s": elapsed}

    env.phase("stat_1000", run)
    # the same stats again once every default timeout (1 s, the kernel's too) ran out
    time.sleep(WARM_AFTER)
    env.phase("stat_1000_warm", run)


def untar(env: Env) -> None:
    root = env.mount(cold=False)

    def run() -> Metrics:
        t0 = time.perf_counter()
        cmd = ["tar", "xf", str(env.files.tar_file), "--no-same-owner", "-C", str(root)]
        _run(cmd, env.sizes.timeout)
        exit_s = _since(t0)
        env.store.wait_keys("src/", env.files.source, env.sizes.timeout)
        return {"exit_s": exit_s, "server_s": _since(t0)}

    env.phase("untar", run)


def tar_c(env: Env) -> None:
    root = env.mount(cold=True)

    def run() -> Metrics:
        seen: dict[str, str] = {}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["tar", "cf", "-", "-C", str(root), "src"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    seen[member.name] = hashlib.md5(f.read()).hexdigest()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.wait(timeout=env.sizes.timeout) != 0:
            raise RuntimeError(f"tar exited {proc.returncode}: {err.decode(errors='replace')}")
        elapsed = _since(t0)
        wrong = [k for k, v in env.files.source_md5.items() if seen.get(k) != v]
        if wrong or len(seen) != len(env.files.source_md5):
            raise RuntimeError(f"{len(wrong)} files missing or different, e.g. {wrong[:1]}")
        return {"time_s": elapsed}

    env.phase("tar_c", run)


def prepare_mv(store: Store, files: DataFiles) -> None:
    store.put_many(data.mv_files(files.sizes))


def mv_500(env: Env) -> None:
    root = env.mount(cold=False)
    keys = [k.replace("mvsrc/", "mvdst/", 1) for k in data.mv_files(env.sizes)]

    def run() -> Metrics:
        t0 = time.perf_counter()
        _run(["mv", str(root / "mvsrc"), str(root / "mvdst")], env.sizes.timeout)
        exit_s = _since(t0)
        env.store.wait_keys("mvdst/", keys, env.sizes.timeout)
        env.store.wait_gone("mvsrc/", env.sizes.timeout)
        return {"exit_s": exit_s, "server_s": _since(t0)}

    env.phase("mv_500", run)


def prepare_src(store: Store, files: DataFiles) -> None:
    store.put_many(files.source)


def rm_rf(env: Env) -> None:
    root = env.mount(cold=False)

    def run() -> Metrics:
        t0 = time.perf_counter()
        _run(["rm", "-rf", str(root / "src")], env.sizes.timeout)
        exit_s = _since(t0)
        if (root / "src").exists():
            raise RuntimeError("src still exists after rm -rf")
        env.store.wait_gone("src/", env.sizes.timeout)
        return {"exit_s": exit_s, "server_s": _since(t0)}

    env.phase("rm_rf", run)


def prepare_append(store: Store, files: DataFiles) -> None:
    base, _, _, _ = data.append_edit_expected(files.sizes)
    store.put_many({"edit.bin": base})


def append_edit(env: Env) -> None:
    root = env.mount(cold=False)
    _, add, patch, off = data.append_edit_expected(env.sizes)
    want = data.after_append_edit(env.sizes)
    md5 = hashlib.md5(want).hexdigest()

    def run() -> Metrics:
        t0 = time.perf_counter()
        with open(root / "edit.bin", "ab") as f:
            f.write(add)
        with open(root / "edit.bin", "r+b") as f:
            f.seek(off)
            f.write(patch)
        close_s = _since(t0)
        env.store.wait_md5("edit.bin", len(want), md5, env.sizes.timeout)
        return {"close_s": close_s, "server_s": _since(t0)}

    env.phase("append_edit", run)


#: edit_1m_in_1g: where the 1 MiB is written (unaligned, mid-object)
EDIT_OFFSET = 512 * data.MiB + 4097


def prepare_edit_1g(store: Store, files: DataFiles) -> None:
    store.put_file("edit1g.bin", files.big_file)


def edit_patch(sizes: Sizes) -> tuple[int, bytes]:
    """Where the edit goes in the big object and what it writes (1 MiB, or 64 KiB if quick)."""
    size = data.MiB if sizes.big >= 1024 * data.MiB else 64 * 1024
    offset = EDIT_OFFSET if sizes.big >= 1024 * data.MiB else sizes.big // 2 + 4097
    return offset, hashlib.sha256(b"edit").digest() * (size // 32)


def edit_1g(env: Env) -> None:
    """A 1 MiB edit in the middle of a 1 GiB object: until the server has it (and bytes
    uploaded, in the requests table); then the bytes around the edit are checked."""
    root = env.mount(cold=False)
    offset, patch = edit_patch(env.sizes)

    def run() -> Metrics:
        t0 = time.perf_counter()
        with open(root / "edit1g.bin", "r+b") as f:
            f.seek(offset)
            f.write(patch)
        close_s = _since(t0)
        env.store.wait_range("edit1g.bin", env.sizes.big, offset, patch, env.sizes.timeout)
        server_s = _since(t0)
        with open(env.files.big_file, "rb") as f:
            f.seek(offset - 4096)
            before = f.read(4096)
            f.seek(offset + len(patch))
            after = f.read(4096)
        got = env.store.read_range("edit1g.bin", offset - 4096, offset + len(patch) + 4096)
        if got != before + patch + after:
            raise RuntimeError("the bytes around the edit are wrong on the server")
        return {"close_s": close_s, "server_s": server_s}

    env.phase("edit_1m_in_1g", run)


SCENARIOS: list[Scenario] = [
    Scenario("write_1g", ("write_1g",), write_1g),
    Scenario(
        "read_1g",
        ("read_1g_cold", "read_1g_warm", "read_1g_remount"),
        read_1g,
        dataset="bigread",
    ),
    Scenario("rand_4k_256m", ("rand_4k_256m", "rand_4k_256m_cached"), rand_4k, dataset="bigread"),
    Scenario("small_files_2000", ("small_files_2000",), small_files),
    Scenario(
        "ls_lR_10k",
        ("ls_lR_10k_cold", "ls_lR_10k_warm", "ls_lR_10k_remount"),
        _tree_tool("ls_lR"),
        "tree",
    ),
    Scenario("find_10k", ("find_10k_cold", "find_10k_warm"), _tree_tool("find"), "tree"),
    Scenario("du_10k", ("du_10k_cold", "du_10k_warm"), _tree_tool("du"), "tree"),
    Scenario("stat_1000", ("stat_1000", "stat_1000_warm"), stat_1000, dataset="tree"),
    Scenario("untar", ("untar",), untar),
    Scenario("tar_c", ("tar_c",), tar_c, dataset="src"),
    Scenario("mv_500", ("mv_500",), mv_500, prepare=prepare_mv),
    Scenario("rm_rf", ("rm_rf",), rm_rf, prepare=prepare_src),
    Scenario("append_edit", ("append_edit",), append_edit, prepare=prepare_append),
    Scenario("edit_1m_in_1g", ("edit_1m_in_1g",), edit_1g, prepare=prepare_edit_1g),
]

#: the rows of the main table: (result, metric), in the order printed
TABLE_ROWS: list[tuple[str, str]] = [
    ("write_1g", "close_s"),
    ("write_1g", "server_s"),
    ("write_1g", "mb_s"),
    ("read_1g_cold", "mb_s"),
    ("read_1g_warm", "mb_s"),
    ("read_1g_remount", "mb_s"),
    ("rand_4k_256m", "iops"),
    ("rand_4k_256m_cached", "iops"),
    ("small_files_2000", "close_s"),
    ("small_files_2000", "server_s"),
    *[(f"{t}_10k_{c}", "time_s") for t in ("ls_lR", "find", "du") for c in ("cold", "warm")],
    ("ls_lR_10k_remount", "time_s"),
    ("stat_1000", "time_s"),
    ("stat_1000_warm", "time_s"),
    ("untar", "exit_s"),
    ("untar", "server_s"),
    ("tar_c", "time_s"),
    ("mv_500", "exit_s"),
    ("mv_500", "server_s"),
    ("rm_rf", "exit_s"),
    ("rm_rf", "server_s"),
    ("append_edit", "close_s"),
    ("append_edit", "server_s"),
    ("edit_1m_in_1g", "close_s"),
    ("edit_1m_in_1g", "server_s"),
]

RESULT_NAMES: list[str] = [r for s in SCENARIOS for r in s.results]
