"""Special files through a real mount: fifos, sockets, character and block devices.

Each is an empty object whose `mode` metadata carries the file type bits (as s3fs stores them)
and, for a device, whose `rdev` metadata carries its number; `mknod` of a regular file is a
create. The kernel serves opens of a fifo or a device itself. Checked on every store: what
`stat` shows, what the server holds (`mnt.store`), what a fresh daemon reads back
(`remount`), data through a fifo, and `tar`, `rsync -a` and `cp -a` of a tree holding them.
The tests run as root (devices need CAP_MKNOD), as the whole FUSE suite does.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

from tests.support.helpers import Mount, require_tool, run_tool

CHR = os.makedev(1, 3)  # /dev/null's numbers
BLK = os.makedev(7, 200)


def bind_socket(path: Path) -> None:
    """A bound UNIX socket at `path` (bound from its directory: sun_path is short)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(here)


def make_specials(root: Path) -> None:
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "chr", stat.S_IFCHR | 0o644, CHR)
    os.mknod(root / "blk", stat.S_IFBLK | 0o600, BLK)
    bind_socket(root / "sock")
    os.chmod(root / "sock", 0o751)


def describe(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """name -> (file type, permission bits, rdev, size, mtime in whole seconds)."""
    out: dict[str, tuple[object, ...]] = {}
    for name in sorted(os.listdir(root)):
        if name in skip:
            continue
        st = os.lstat(root / name)
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        out[name] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), rdev, st.st_size)
        out[name] += (int(st.st_mtime),)
    return out


def run(argv: list[str]) -> str:
    require_tool(argv[0])
    done = run_tool(argv, 120)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return str(done.stdout)


def test_special_files_are_stored_and_read_back(mnt: Mount) -> None:
    assert mnt.store is not None
    make_specials(mnt.path)
    os.mknod(mnt.path / "reg", stat.S_IFREG | 0o604)  # a regular file: a create
    expected = {
        "blk": (stat.S_IFBLK, 0o600, BLK, 0),
        "chr": (stat.S_IFCHR, 0o644, CHR, 0),
        "fifo": (stat.S_IFIFO, 0o640, 0, 0),
        "reg": (stat.S_IFREG, 0o604, 0, 0),
        "sock": (stat.S_IFSOCK, 0o751, 0, 0),
    }
    shown = {name: facts[:4] for name, facts in describe(mnt.path).items()}
    assert shown == expected
    for name, (fmt, perm, rdev, _size) in expected.items():
        size, meta = mnt.store.head(name)
        assert size == 0
        assert meta.get("mode") == str(fmt | perm), name
        assert meta.get("rdev") == (str(rdev) if rdev else None), name
    mnt.remount()
    shown = {name: facts[:4] for name, facts in describe(mnt.path).items()}
    assert shown == expected
    for name in expected:
        os.unlink(mnt.path / name)
    assert os.listdir(mnt.path) == []
    assert mnt.store.keys() == []


def test_a_fifo_passes_data_between_two_processes(mnt: Mount) -> None:
    fifo = mnt.path / "fifo"
    os.mkfifo(fifo)
    for text in ("before a remount", "after it"):
        writer = subprocess.Popen(["sh", "-c", f"printf '{text}' > '{fifo}'"])
        try:
            assert run(["cat", str(fifo)]) == text
        finally:
            assert writer.wait(timeout=60) == 0
        mnt.remount()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_tar_rsync_and_cp_round_trip_special_files(mnt: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_specials(src)
    (src / "file").write_bytes(b"regular")
    for name in ("fifo", "chr", "blk", "sock", "file"):
        os.utime(src / name, (1_700_000_000, 1_700_000_000 + len(name)), follow_symlinks=False)
    want = describe(src)
    # tar: sockets are not archived ("socket ignored")
    run(["tar", "-C", str(src), "-cf", str(tmp_path / "in.tar"), "."])
    (mnt.path / "t").mkdir()
    run(["tar", "-C", str(mnt.path / "t"), "-xpf", str(tmp_path / "in.tar")])
    run(["rsync", "-a", f"{src}/", f"{mnt.path / 'r'}/"])
    run(["cp", "-a", str(src), str(mnt.path / "c")])
    mnt.remount()  # what follows is read back from the server
    assert describe(mnt.path / "t") == {k: v for k, v in want.items() if k != "sock"}
    assert describe(mnt.path / "r") == want
    assert describe(mnt.path / "c") == want
    run(["cp", "-a", str(mnt.path / "c"), str(tmp_path / "c-out")])
    assert describe(tmp_path / "c-out") == want
    run(["tar", "-C", str(mnt.path / "t"), "-cf", str(tmp_path / "out.tar"), "."])
    (tmp_path / "t-out").mkdir()
    run(["tar", "-C", str(tmp_path / "t-out"), "-xpf", str(tmp_path / "out.tar")])
    assert describe(tmp_path / "t-out") == {k: v for k, v in want.items() if k != "sock"}
    run(["rsync", "-a", f"{mnt.path / 'r'}/", f"{tmp_path / 'r-out'}/"])
    assert describe(tmp_path / "r-out") == want
