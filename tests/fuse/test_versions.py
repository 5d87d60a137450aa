"""The `.versions/` tree through a real mount, on SeaweedFS with versioning and on the local
store: versions made with plain writes, listed with `os.listdir` (sorted as `ls` does), read,
restored with `cp`; deleted files; point-in-time views; a presigned URL of an old version.

SeaweedFS stamps versions to the second, so the point-in-time test sleeps a little over a second
on each side of its instant. The stores are listed here explicitly (see test_xattrs.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.helpers import (
    Mount,
    MountFactory,
    S3StoreClient,
    StoreEnv,
    local_or_s3_env,
    require_tool,
)

NS = "user.bucketfs."


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


def enable_versioning(mnt: Mount) -> None:
    raw = mnt.raw_store
    if isinstance(raw, S3StoreClient):
        raw.client.put_bucket_versioning(
            Bucket=raw.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    else:  # the local store: through the mount's own attribute
        os.setxattr(mnt.path, NS + "versioning", b"Enabled")
    assert os.getxattr(mnt.path, NS + "versioning") == b"Enabled"


def write(mnt: Mount, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    mnt.flush()  # one upload, so one version, per write


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("not refused")


def test_versions_written_listed_read_restored(
    store_env: StoreEnv, mnt: Mount, tmp_path: Path
) -> None:
    enable_versioning(mnt)
    d = mnt.path / "d"
    d.mkdir()
    for data in (b"first", b"second", b"third"):
        write(mnt, d / "notes.txt", data)
    assert ".versions" not in os.listdir(d)
    key_dir = d / ".versions" / "notes.txt"
    assert "notes.txt" in os.listdir(d / ".versions")
    names = sorted(os.listdir(key_dir))  # as ls sorts them: oldest first
    assert [(key_dir / n).read_bytes() for n in names] == [b"first", b"second", b"third"]
    oldest = key_dir / names[0]
    assert os.stat(oldest).st_size == 5
    assert os.stat(oldest).st_mode & 0o222 == 0
    assert os.getxattr(oldest, NS + "is_latest") == b"false"
    assert os.getxattr(key_dir / names[-1], NS + "is_latest") == b"true"
    assert os.getxattr(oldest, NS + "version_id").decode() in names[0]
    # a copy out carries the version's metadata, its type too (its name says nothing of it);
    # its own fields (version_id, is_latest, ...) are read by name only
    assert os.listxattr(oldest) == [NS + "content_type"]
    tagged = mnt.path / "tagged.txt"  # d/.versions is listed already (and cached)
    write(mnt, tagged, b"one")
    os.setxattr(tagged, "user.colour", b"red")
    write(mnt, tagged, b"two")
    tagged_dir = mnt.path / ".versions" / "tagged.txt"
    # "one", "one" with the colour (the setxattr: a copy in place, a version), "two"
    old_tagged = tagged_dir / sorted(os.listdir(tagged_dir))[1]
    assert old_tagged.read_bytes() == b"one"
    cp = require_tool("cp")
    subprocess.run([cp, "-a", str(oldest), str(old_tagged), str(tmp_path)], check=True)
    copied = tmp_path / old_tagged.name
    assert {n: os.getxattr(copied, n) for n in os.listxattr(copied)} == {
        "user.colour": b"red",
        NS + "content_type": b"text/plain",
    }
    assert os.listxattr(tmp_path / names[0]) == [NS + "content_type"]
    # read-only, whatever is tried
    assert errno_of(open, oldest, "wb") == errno.EROFS
    assert errno_of(os.unlink, oldest) == errno.EROFS
    assert errno_of(os.rename, oldest, d / "x") == errno.EROFS
    assert errno_of(os.mkdir, d / ".versions" / "new") == errno.EROFS
    assert errno_of(os.setxattr, oldest, "user.k", b"v") == errno.EROFS
    # restore: cp d/.versions/name/V d/name
    subprocess.run([cp, str(oldest), str(d / "notes.txt")], check=True, timeout=30)
    assert (d / "notes.txt").read_bytes() == b"first"
    store = mnt.store
    assert store is not None
    assert store.get("d/notes.txt") == b"first"
    if store_env.kind == "s3":  # a URL of an old version downloads that version
        url = os.getxattr(key_dir / names[1], NS + "url").decode()
        curl = require_tool("curl")
        fetched = subprocess.run([curl, "-sS", "-f", url], capture_output=True, timeout=30)
        assert fetched.stdout == b"second", fetched.stderr


def test_deleted_files_are_found(mnt: Mount) -> None:
    enable_versioning(mnt)
    write(mnt, mnt.path / "precious.dat", b"do not lose me")
    os.unlink(mnt.path / "precious.dat")
    mnt.flush()
    assert "precious.dat" not in os.listdir(mnt.path)
    assert "precious.dat" in os.listdir(mnt.path / ".versions")
    key_dir = mnt.path / ".versions" / "precious.dat"
    kept, marker = sorted(os.listdir(key_dir))
    assert marker.endswith(".deleted")
    assert os.stat(key_dir / marker).st_size == 0
    assert os.getxattr(key_dir / marker, NS + "delete_marker") == b"true"
    shutil.copyfile(key_dir / kept, mnt.path / "precious.dat")
    assert (mnt.path / "precious.dat").read_bytes() == b"do not lose me"


def test_point_in_time(mnt: Mount) -> None:
    enable_versioning(mnt)
    d = mnt.path / "proj"
    (d / "src").mkdir(parents=True)
    write(mnt, d / "a.txt", b"a before")
    write(mnt, d / "b.txt", b"b before")
    write(mnt, d / "src" / "main.c", b"int main;")
    time.sleep(1.1)
    instant = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    time.sleep(1.1)
    write(mnt, d / "a.txt", b"a after")
    os.unlink(d / "b.txt")
    write(mnt, d / "c.txt", b"new")
    then = d / ".versions" / f"@{instant}"
    assert sorted(os.listdir(then)) == ["a.txt", "b.txt", "src"]
    assert (then / "a.txt").read_bytes() == b"a before"
    assert (then / "b.txt").read_bytes() == b"b before"
    assert (then / "src" / "main.c").read_bytes() == b"int main;"
    assert errno_of(os.unlink, then / "a.txt") == errno.EROFS
    now = d / ".versions" / "@2999-01-01T00:00:00Z"
    assert sorted(os.listdir(now)) == ["a.txt", "c.txt", "src"]
    assert (now / "a.txt").read_bytes() == b"a after"
    assert errno_of(os.listdir, d / ".versions" / "@not-a-time") == errno.ENOENT


def test_without_versioning_the_current_object_only(mnt: Mount) -> None:
    write(mnt, mnt.path / "f", b"old")
    write(mnt, mnt.path / "f", b"new")
    names = os.listdir(mnt.path / ".versions" / "f")
    assert len(names) == 1
    assert (mnt.path / ".versions" / "f" / names[0]).read_bytes() == b"new"


def test_noversions_hides_the_tree(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=["noversions"])
    (mnt.path / "f").write_bytes(b"x")
    assert errno_of(os.listdir, mnt.path / ".versions") == errno.ENOENT
