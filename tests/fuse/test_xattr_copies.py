"""Copies with their extended attributes, into and out of a mount, with the real tools: `rsync
-aX` (both ways, and back again), `cp -a`, `tar --xattrs`, `getfattr -d`, `rsync -aHAX`.

A listed attribute is one a copy carries: `rsync -X` removes from its copy every listed name the
source lacks, `cp -a` and `tar --xattrs` copy every listed name. So bucketfs lists user metadata
and the writable fields that are set (`content_type` when it is not the type guessed from the
name), and answers the read-only ones (`etag`, `size`, checksums, `upload_state`, ...) by name
only: listed, they failed `rsync -X` in (EPERM on removing them, exit 23) and went stale on
every copy out. Each test copies a small tree whose files carry user metadata, a Content-Type
and a Cache-Control, and checks every copy has exactly those attributes, no more.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from tests.support.helpers import Mount, require_tool, run_tool, store_keeps_marker_metadata

#: unmodified tools: local store and SeaweedFS (tests/fuse/conftest.py)
pytestmark = pytest.mark.above_the_store

NS = "user.bucketfs."

Attrs = dict[str, dict[str, bytes]]


def make_tree(root: Path, *, dir_meta: bool) -> Attrs:
    """Files with user metadata, a set Content-Type and Cache-Control, a file with none, a
    symlink (user.* cannot be set on one); user metadata on a directory where the store keeps
    a marker's metadata. Returns the attributes every copy must carry, by relative path."""
    (root / "sub").mkdir(parents=True)
    want: Attrs = {
        "": {},
        "a.txt": {"user.project": b"apollo", "user.owner": b"Ann"},
        "b.bin": {NS + "content_type": b"text/x-custom", NS + "cache_control": b"max-age=60"},
        "plain.html": {},  # its type is the one guessed from the name: nothing to carry
        "sub": {"user.team": b"ops"} if dir_meta else {},
        "sub/c.md": {"user.k": b"v"},
    }
    for rel, attrs in want.items():
        path = root / rel
        if rel and rel != "sub":
            path.write_bytes(rel.encode())
        for name, value in attrs.items():
            os.setxattr(path, name, value)
    os.symlink("a.txt", root / "ln")
    return want


def attrs_of(root: Path) -> Attrs:
    """Every listed attribute of the files and directories under `root` (not symlinks)."""
    out: Attrs = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (
            ["", *dirnames, *filenames] if Path(dirpath) == root else [*dirnames, *filenames]
        ):
            path = Path(dirpath) / name
            if stat.S_ISLNK(os.lstat(path).st_mode):
                assert os.listxattr(path, follow_symlinks=False) == []
                continue
            rel = path.relative_to(root).as_posix() if name else ""
            out[rel] = {n: os.getxattr(path, n) for n in os.listxattr(path)}
    return out


def run(*argv: str) -> str:
    require_tool(argv[0])
    done = run_tool(list(argv), 120)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return str(done.stdout)


def test_rsync_x_into_and_out_of_a_mount_and_back(mnt: Mount, tmp_path: Path) -> None:
    """local -> bucketfs -> local -> bucketfs -> local, each `rsync -aX` exits 0 and carries
    exactly the attributes of the source; a second run has nothing to do."""
    assert mnt.store is not None
    dir_meta = store_keeps_marker_metadata(mnt.store)
    want = make_tree(tmp_path / "src", dir_meta=dir_meta)
    src, first, second = tmp_path / "src", mnt.path / "r", mnt.path / "r2"
    run("rsync", "-aX", f"{src}/", f"{first}/")
    assert attrs_of(first) == want
    # directory mtimes cannot outlive the attribute cache where markers keep no metadata
    dir_times = [] if dir_meta else ["--omit-dir-times"]
    again = run("rsync", "-aX", *dir_times, "--itemize-changes", f"{src}/", f"{first}/")
    assert again == "", f"the second rsync -aX changed something:\n{again}"
    # rsync removes what its copy has and the source lacks: user metadata, a set type
    os.setxattr(first / "a.txt", "user.extra", b"1")
    os.setxattr(first / "plain.html", NS + "content_type", b"text/plain")
    run("rsync", "-aX", f"{src}/", f"{first}/")
    assert attrs_of(first) == want
    out = tmp_path / "out"
    run("rsync", "-aX", f"{first}/", f"{out}/")
    assert attrs_of(out) == want
    run("rsync", "-aX", f"{out}/", f"{second}/")
    run("rsync", "-aX", f"{second}/", f"{tmp_path / 'out2'}/")
    assert attrs_of(tmp_path / "out2") == want
    mnt.remount()  # what the store kept, not what the mount remembers
    assert attrs_of(first) == want
    assert attrs_of(second) == want
    assert mnt.store.head("r/a.txt")[1]["project"] == "apollo"
    assert os.getxattr(second / "b.bin", NS + "content_type") == b"text/x-custom"
    assert os.getxattr(second / "plain.html", NS + "content_type") == b"text/html"  # guessed


def test_cp_a_tar_and_getfattr_out_and_back(mnt: Mount, tmp_path: Path) -> None:
    assert mnt.store is not None
    want = make_tree(tmp_path / "src", dir_meta=store_keeps_marker_metadata(mnt.store))
    run("cp", "-a", str(tmp_path / "src"), str(mnt.path / "t"))
    assert attrs_of(mnt.path / "t") == want
    run("cp", "-a", str(mnt.path / "t"), str(tmp_path / "out"))
    assert attrs_of(tmp_path / "out") == want
    run("cp", "-a", str(tmp_path / "out"), str(mnt.path / "back"))
    assert attrs_of(mnt.path / "back") == want
    # tar --xattrs: out of the mount, into it again and onto the local disk
    archive = str(tmp_path / "t.tar")
    run("tar", "--xattrs", "-C", str(mnt.path / "t"), "-cf", archive, ".")
    for where in (mnt.path / "untarred", tmp_path / "untarred"):
        where.mkdir()
        run("tar", "--xattrs", "--xattrs-include=user.*", "-C", str(where), "-xf", archive)
        assert attrs_of(where) == want
    # getfattr -d shows what a copy carries; the read-only fields are there by name
    dump = run("getfattr", "-R", "-d", "-m", "-", "--absolute-names", str(mnt.path / "t"))
    shown = {line.split("=", 1)[0] for line in dump.splitlines() if "=" in line}
    assert shown == {name for attrs in want.values() for name in attrs}
    # cp -a set system.posix_acl_access on each file: refused as expected, not logged at INFO
    assert "posix_acl" not in mnt.log.read_text(errors="replace")
    mnt.flush()  # an ETag once uploaded
    etag = run("getfattr", "--only-values", "-n", NS + "etag", str(mnt.path / "back" / "a.txt"))
    assert etag


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A `system.posix_acl_*` value: version 2, then (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


NO_ID = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def test_rsync_ahax(mnt: Mount, tmp_path: Path) -> None:
    """`rsync -aHAX` exits 0 both ways, the attributes carried, where the source has no hard
    links and no ACLs beyond its modes. bucketfs keeps no POSIX ACLs (EOPNOTSUPP for
    system.posix_acl_*, which rsync takes as "no ACL" when reading) and no hard links (EPERM):
    a source with a real ACL (a named user) or a hard link makes rsync say so and exit 23, as
    on any file system without them; with a hard link the second name is missing."""
    assert mnt.store is not None
    want = make_tree(tmp_path / "src", dir_meta=store_keeps_marker_metadata(mnt.store))
    src = tmp_path / "src"
    run("rsync", "-aHAX", f"{src}/", f"{mnt.path / 'r'}/")
    assert attrs_of(mnt.path / "r") == want
    run("rsync", "-aHAX", f"{mnt.path / 'r'}/", f"{tmp_path / 'out'}/")
    assert attrs_of(tmp_path / "out") == want
    rsync = require_tool("rsync")
    # a named user's entry: not expressible as a mode
    named = acl((USER_OBJ, 6, NO_ID), (USER, 4, 1234), (GROUP_OBJ, 4, NO_ID), (MASK, 4, NO_ID))
    os.setxattr(src / "plain.html", "system.posix_acl_access", named + acl((OTHER, 4, NO_ID))[4:])
    done = run_tool([rsync, "-aHAX", f"{src}/", f"{mnt.path / 'acl'}/"], 120)
    assert done.returncode == 23, done.stderr
    assert "set_acl: xacl_set(.plain.html" in done.stderr
    assert "Operation not supported (95)" in done.stderr
    assert (mnt.path / "acl" / "plain.html").read_bytes() == b"plain.html"  # the data came
    assert attrs_of(mnt.path / "acl") == want  # and the attributes
    os.removexattr(src / "plain.html", "system.posix_acl_access")
    os.link(src / "a.txt", src / "hard.txt")
    done = run_tool([rsync, "-aHAX", f"{src}/", f"{mnt.path / 'linked'}/"], 120)
    assert done.returncode == 23, done.stderr
    assert "failed: Operation not permitted (1)" in done.stderr
    names = {"a.txt", "hard.txt"} & set(os.listdir(mnt.path / "linked"))
    assert len(names) == 1  # rsync sends one name and links the other to it
    assert (mnt.path / "linked" / names.pop()).read_bytes() == b"a.txt"
