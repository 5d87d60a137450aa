"""Sizes for the quick and full runs, and the deterministic data the workloads use.

Invariant: the same `Sizes` always produce the same bytes (seeded generators), so a file read
back can be compared with its expected md5 and two runs measure the same work.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    big: int  # write_1g, read_1g_*
    rand_object: int  # rand_4k_256m: object size
    rand_reads: int  # rand_4k_256m: how many 4 KiB reads
    small_files: int  # small_files_2000
    small_dirs: int
    tree_objects: int  # ls_lR_10k, find_10k, du_10k
    tree_dirs: int
    stat_files: int  # stat_1000
    src_files: int  # untar, tar_c, rm_rf
    mv_files: int  # mv_500
    append_base: int = 8 * MiB
    append_add: int = 1 * MiB
    overwrite: int = 64 * 1024
    repetitions: int = 3
    timeout: float = 600.0  # seconds one phase may take before it counts as failed

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(
    big=1024 * MiB,
    rand_object=256 * MiB,
    rand_reads=1000,
    small_files=2000,
    small_dirs=40,
    tree_objects=10_000,
    tree_dirs=100,
    stat_files=1000,
    src_files=3000,
    mv_files=500,
)
QUICK = Sizes(
    big=64 * MiB,
    rand_object=32 * MiB,
    rand_reads=300,
    small_files=200,
    small_dirs=10,
    tree_objects=1000,
    tree_dirs=20,
    stat_files=200,
    src_files=300,
    mv_files=100,
    repetitions=1,
    timeout=120.0,
)


def pattern_block(seed: int, size: int = MiB) -> bytes:
    return random.Random(seed).randbytes(size)


def write_big_file(path: Path, size: int, seed: int = 1) -> None:
    """`size` bytes of incompressible data, made of 64 distinct 1 MiB blocks."""
    if path.exists() and path.stat().st_size == size:
        return
    blocks = [pattern_block(seed * 1000 + i) for i in range(64)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for i in range(size // MiB):
            f.write(blocks[i % len(blocks)])
        f.write(blocks[0][: size % MiB])
    os.replace(tmp, path)


def big_blocks(seed: int = 2) -> list[bytes]:
    """Blocks a writer cycles through (write_1g): incompressible, never one repeated block."""
    return [pattern_block(seed * 1000 + i) for i in range(16)]


def tree_objects(sizes: Sizes) -> dict[str, bytes]:
    """The ls/find/du/stat tree: `tree/dNNN/fNNNNN` spread over `tree_dirs` directories."""
    rng = random.Random(10)
    per_dir = max(1, sizes.tree_objects // sizes.tree_dirs)
    out: dict[str, bytes] = {}
    for i in range(sizes.tree_objects):
        d = min(i // per_dir, sizes.tree_dirs - 1)
        out[f"tree/d{d:03d}/f{i:05d}"] = rng.randbytes(rng.randrange(16, 2048))
    return out


def stat_keys(sizes: Sizes) -> list[str]:
    """`stat_files` keys of the tree, spread over every directory, in a fixed shuffled order."""
    keys = sorted(tree_objects_keys(sizes))
    step = max(1, len(keys) // sizes.stat_files)
    chosen = keys[::step][: sizes.stat_files]
    random.Random(11).shuffle(chosen)
    return chosen


def tree_objects_keys(sizes: Sizes) -> list[str]:
    per_dir = max(1, sizes.tree_objects // sizes.tree_dirs)
    return [
        f"tree/d{min(i // per_dir, sizes.tree_dirs - 1):03d}/f{i:05d}"
        for i in range(sizes.tree_objects)
    ]


def source_tree(n_files: int, top: str = "src") -> dict[str, bytes]:
    """A source-tree-like set of files: a few KiB each, 3 levels of nested directories."""
    rng = random.Random(20)
    words = [rng.randbytes(6).hex() for _ in range(400)]
    out: dict[str, bytes] = {}
    for i in range(n_files):
        a, b = i % 12, (i // 12) % 10
        name = f"{top}/pkg{a:02d}/mod{b:02d}/file{i:05d}.{('c', 'h', 'py', 'txt')[i % 4]}"
        lines = [" ".join(rng.choices(words, k=8)) for _ in range(rng.randrange(10, 120))]
        out[name] = ("\n".join(lines) + "\n").encode()
    return out


def small_files(sizes: Sizes) -> dict[str, bytes]:
    """small_files_2000: `small/dNN/sNN/fNNNNN` of 100 B to 4 KiB."""
    rng = random.Random(30)
    out: dict[str, bytes] = {}
    for i in range(sizes.small_files):
        d = i % sizes.small_dirs
        out[f"small/d{d:02d}/s{(i // sizes.small_dirs) % 5}/f{i:05d}"] = rng.randbytes(
            rng.randrange(100, 4096)
        )
    return out


def mv_files(sizes: Sizes) -> dict[str, bytes]:
    rng = random.Random(40)
    return {
        f"mvsrc/f{i:04d}": rng.randbytes(rng.randrange(100, 8192)) for i in range(sizes.mv_files)
    }


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    """A tar of `files` with fixed owners and times, so the archive is byte-for-byte stable."""
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    dirs = sorted({str(Path(k).parents[i]) for k in files for i in range(len(Path(k).parts) - 1)})
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, path)


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


def append_edit_expected(sizes: Sizes) -> tuple[bytes, bytes, bytes, int]:
    """(base content, appended bytes, overwrite bytes, overwrite offset) for append_edit."""
    rng = random.Random(50)
    base = rng.randbytes(sizes.append_base)
    add = rng.randbytes(sizes.append_add)
    patch = rng.randbytes(sizes.overwrite)
    return base, add, patch, sizes.append_base // 2


def after_append_edit(sizes: Sizes) -> bytes:
    base, add, patch, off = append_edit_expected(sizes)
    data = bytearray(base + add)
    data[off : off + len(patch)] = patch
    return bytes(data)
