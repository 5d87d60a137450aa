"""Unmodified tools on the mount: contents, modes, owners, mtimes and symlinks must survive.

Each test copies a small generated tree (nested dirs, an empty dir, an executable, a file owned
by someone else, symlinks, fixed past mtimes) through the mount with a real tool and compares.
Directory modes and mtimes are compared only where the store keeps metadata on `dir/` markers
(SeaweedFS 4.x drops it, so there they cannot outlive the attribute cache; test_posix checks
them while cached).
"""

from __future__ import annotations

import filecmp
import io
import mmap
import os
import random
import sqlite3
import stat
import tarfile
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.helpers import Mount, require_tool, run_tool, store_keeps_marker_metadata

#: core semantics and unmodified tools: local store and SeaweedFS (tests/fuse/conftest.py)
pytestmark = pytest.mark.above_the_store

BASE_MTIME = 1_600_000_000
NEEDLE = "NEEDLE-7f3a"


def make_tree(root: Path) -> Path:
    """About 30 files in nested dirs, an empty dir, an executable, two symlinks."""
    rng = random.Random(42)
    dirs = ["a", "a/b", "a/b/c", "d", "d/e", "empty", "bin"]
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    sizes = [0, 1, 100, 4096, 4097, 70_000, 300_000]
    files: list[Path] = []
    for i in range(30):
        d = dirs[i % 6] if i % 6 != 5 else "a"  # "empty" stays empty
        path = root / d / f"f{i:02d}.txt"
        body = rng.randbytes(sizes[i % len(sizes)])
        if i % 4 == 0:
            body = f"line one\n{NEEDLE} in file {i}\nlast line\n".encode() + body
        path.write_bytes(body)
        files.append(path)
    exe = root / "bin" / "run.sh"
    exe.write_text("#!/bin/sh\necho hello\n")
    files.append(exe)
    os.chmod(exe, 0o755)
    os.chmod(files[3], 0o600)
    os.chown(files[5], 1234, 5678)
    os.symlink("../a/f00.txt", root / "d" / "link-to-file")
    os.symlink("a/b", root / "link-to-dir")
    for n, path in enumerate(files):
        os.utime(path, (BASE_MTIME + n * 1000, BASE_MTIME + n * 1000))
    for n, d in enumerate(sorted(dirs, key=lambda d: -d.count("/"))):  # deepest first
        os.utime(root / d, (BASE_MTIME - n * 1000, BASE_MTIME - n * 1000))
    return root


Entry = tuple[object, ...]


def raise_error(exc: OSError) -> None:
    raise exc


def snapshot(root: Path, *, dir_meta: bool = True) -> dict[str, Entry]:
    """rel path -> kind and attributes (mtime at 1 s granularity), not following symlinks."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_error):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            meta = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", *meta) if dir_meta else ("dir",)
            else:
                out[rel] = ("file", *meta, st.st_size)
    return out


def assert_same_tree(expected: Path, actual: Path, *, dir_meta: bool = True) -> None:
    want = snapshot(expected, dir_meta=dir_meta)
    got = snapshot(actual, dir_meta=dir_meta)
    assert got == want
    for rel, entry in want.items():
        if entry[0] == "file":
            assert filecmp.cmp(expected / rel, actual / rel, shallow=False), rel


def run(argv: list[str], cwd: Path | None = None, **kw: object) -> str:
    require_tool(argv[0])
    done = run_tool(argv, 120, cwd=cwd, **kw)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return str(done.stdout)


def keeps_dir_meta(mnt: Mount) -> bool:
    """Whether directory modes/mtimes can outlive the attribute cache on this store."""
    assert mnt.store is not None
    return store_keeps_marker_metadata(mnt.store)


def test_cp_a_in_and_out(mnt: Mount, tmp_path: Path) -> None:
    dir_meta = keeps_dir_meta(mnt)
    src = make_tree(tmp_path / "src")
    run(["cp", "-a", str(src), str(mnt.path / "tree")])
    assert_same_tree(src, mnt.path / "tree", dir_meta=dir_meta)
    assert run([str(mnt.path / "tree" / "bin" / "run.sh")]) == "hello\n"
    run(["cp", "-a", str(mnt.path / "tree"), str(tmp_path / "out")])
    assert_same_tree(src, tmp_path / "out", dir_meta=dir_meta)
    mnt.remount()
    assert_same_tree(src, mnt.path / "tree", dir_meta=dir_meta)


def tar_members(data: bytes, *, dir_meta: bool = True) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if name in ("", "."):
                continue
            meta = (m.mode, m.uid, m.gid, int(m.mtime))
            if m.issym():
                out[name] = ("link", m.linkname)
            elif m.isdir():
                out[name] = ("dir", *meta) if dir_meta else ("dir",)
            else:
                f = tar.extractfile(m)
                assert f is not None
                out[name] = ("file", *meta, f.read())
    return out


def test_tar_round_trip(mnt: Mount, tmp_path: Path) -> None:
    dir_meta = keeps_dir_meta(mnt)
    src = make_tree(tmp_path / "src")
    run(["tar", "-C", str(src), "-cf", str(tmp_path / "in.tar"), "."])
    (mnt.path / "t").mkdir()
    run(["tar", "-C", str(mnt.path / "t"), "-xf", str(tmp_path / "in.tar")])
    run(["tar", "-C", str(mnt.path / "t"), "-cf", str(tmp_path / "out.tar"), "."])
    expected = tar_members((tmp_path / "in.tar").read_bytes(), dir_meta=dir_meta)
    assert tar_members((tmp_path / "out.tar").read_bytes(), dir_meta=dir_meta) == expected
    assert_same_tree(src, mnt.path / "t", dir_meta=dir_meta)


def test_rsync_in_and_out_then_nothing_to_do(mnt: Mount, tmp_path: Path) -> None:
    dir_meta = keeps_dir_meta(mnt)
    src = make_tree(tmp_path / "src")
    dst = mnt.path / "r"
    run(["rsync", "-a", f"{src}/", f"{dst}/"])
    assert_same_tree(src, dst, dir_meta=dir_meta)
    run(["rsync", "-a", f"{dst}/", f"{tmp_path / 'out'}/"])
    assert_same_tree(src, tmp_path / "out", dir_meta=dir_meta)
    # Where the store drops metadata on `dir/` markers (SeaweedFS), directory mtimes cannot
    # outlive the attribute cache: leave them out of the comparison there, files still count.
    dir_times = [] if dir_meta else ["--omit-dir-times"]
    again = run(["rsync", "-a", *dir_times, "--itemize-changes", f"{src}/", f"{dst}/"])
    assert again == "", f"second rsync transferred something:\n{again}"
    back = run(["rsync", "-a", *dir_times, "--itemize-changes", f"{dst}/", f"{tmp_path / 'out'}/"])
    assert back == "", f"second rsync out transferred something:\n{back}"


def test_sqlite(mnt: Mount) -> None:
    sqlite3_cli = "sqlite3"
    db = mnt.path / "data.db"
    inserts = "\n".join(
        f"INSERT INTO t(name, val) VALUES ('row{i}', {i} * 1.5);" for i in range(1, 1001)
    )
    script = (
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, val REAL);\n"
        f"BEGIN;\n{inserts}\nCOMMIT;\n"
        "SELECT count(*), sum(val) FROM t;\n"
        "PRAGMA integrity_check;\n"
    )
    out = run([sqlite3_cli, str(db)], input=script)
    assert out.split() == ["1000|750750.0", "ok"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT name FROM t WHERE id = 500").fetchone() == ("row500",)
        with conn:  # one transaction
            conn.executemany(
                "INSERT INTO t(name, val) VALUES (?, ?)", [(f"py{i}", i) for i in range(10)]
            )
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1010,)
    assert mnt.store is not None
    assert mnt.store.head("data.db")[0] == os.stat(db).st_size
    mnt.remount()
    out = run([sqlite3_cli, str(db)], input="SELECT count(*) FROM t;\nPRAGMA integrity_check;\n")
    assert out.split() == ["1010", "ok"]
    assert sorted(os.listdir(mnt.path)) == ["data.db"]  # the journal is gone


def test_zipfile_random_access(mnt: Mount) -> None:
    rng = random.Random(5)
    members = {
        f"dir{i % 3}/m{i:02d}.bin": rng.randbytes(rng.randrange(0, 200_000)) for i in range(20)
    }
    members["text.txt"] = b"compressible " * 10_000
    path = mnt.path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i, (name, data) in enumerate(members.items()):
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED)
    names = list(members)
    rng.shuffle(names)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        for name in names:
            assert zf.read(name) == members[name], name
        with zf.open(names[0]) as f:
            f.seek(len(members[names[0]]) // 2)
            assert f.read(100) == members[names[0]][len(members[names[0]]) // 2 :][:100]
    assert mnt.store is not None
    with zipfile.ZipFile(io.BytesIO(mnt.store.get("a.zip"))) as zf:
        assert sorted(zf.namelist()) == sorted(members)


def test_mmap_reads(mnt: Mount) -> None:
    assert mnt.store is not None
    rng = random.Random(6)
    data = rng.randbytes(3 * 1024 * 1024 + 123)
    mnt.store.put("from-store.bin", data)
    (mnt.path / "from-mount.bin").write_bytes(data[::-1])
    for name, expected in (("from-store.bin", data), ("from-mount.bin", data[::-1])):
        with (
            open(mnt.path / name, "rb") as f,
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m,
        ):
            assert len(m) == len(expected)
            for _ in range(50):
                start = rng.randrange(len(expected))
                end = min(len(expected), start + rng.randrange(1, 300_000))
                assert m[start:end] == expected[start:end], (name, start, end)
            assert m[:] == expected


def test_git(mnt: Mount, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    repo = mnt.path / "repo"
    make_tree(repo)

    def git(*args: str) -> str:
        cfg = ["-c", "safe.directory=*", "-c", "init.defaultBranch=main"]
        return run(["git", *cfg, *args], cwd=repo, env=env)

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    (repo / "a" / "f00.txt").write_text("changed\n")
    git("commit", "-q", "-a", "-m", "second")
    assert [line.split(" ", 1)[1] for line in git("log", "--oneline").splitlines()] == [
        "second",
        "first",
    ]
    git("fsck", "--full", "--strict")
    assert git("status", "--porcelain") == ""
    mnt.remount()
    git("fsck", "--full", "--strict")
    assert len(git("log", "--oneline").splitlines()) == 2
    assert git("status", "--porcelain") == ""
    assert git("show", "HEAD:a/f00.txt") == "changed\n"


def copied_tree(mnt: Mount, tmp_path: Path) -> tuple[Path, Path]:
    src = make_tree(tmp_path / "src")
    run(["cp", "-a", str(src), str(mnt.path / "tree")])
    return src, mnt.path / "tree"


def test_grep_r(mnt: Mount, tmp_path: Path) -> None:
    src, tree = copied_tree(mnt, tmp_path)
    expected = sorted(run(["grep", "-r", "-a", NEEDLE, "."], cwd=src).splitlines())
    assert len(expected) == 8
    assert sorted(run(["grep", "-r", "-a", NEEDLE, "."], cwd=tree).splitlines()) == expected


def test_find(mnt: Mount, tmp_path: Path) -> None:
    src, tree = copied_tree(mnt, tmp_path)
    expected = sorted(run(["find", "."], cwd=src).splitlines())
    assert len(expected) > 35
    assert sorted(run(["find", "."], cwd=tree).splitlines()) == expected
    files = run(["find", ".", "-type", "f", "-newermt", "2020-09-14"], cwd=tree)
    assert sorted(files.splitlines()) == sorted(
        run(["find", ".", "-type", "f", "-newermt", "2020-09-14"], cwd=src).splitlines()
    )


def test_du(mnt: Mount, tmp_path: Path) -> None:
    _, tree = copied_tree(mnt, tmp_path)
    out = run(["du", "-s", "--block-size=1024", str(tree)])
    assert int(out.split()[0]) > 0
    out = run(["du", "-s", "--apparent-size", "--block-size=1", str(tree)])
    assert int(out.split()[0]) > 1_000_000
