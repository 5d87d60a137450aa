"""mkdir through the kernel, its marker sent in the background (bucketfs/cache/markers.py):
the directory is there for the mount at once, whatever the server's listing says; rmdir before
the marker went sends nothing; deletes and markers of one name keep their order on the server;
`bucketfs flush`, fsync of a directory, unmount and SIGTERM send what is pending; status shows
it, failures included.

Most tests hold markers back with `writeback_delay=3600` (they go after that quiet period unless
something waits for them), and check the server with `mnt.raw_store` (which does not flush).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import (
    Mount,
    MountFactory,
    is_mounted,
    local_store_env,
    mount_factory_for,
    store_keeps_marker_metadata,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

#: core semantics and unmodified tools: local store and SeaweedFS (tests/fuse/conftest.py)
pytestmark = pytest.mark.above_the_store

HOLD = "writeback_delay=3600"
#: every cache of the mount expires at once: each lookup and readdir asks the server
NO_CACHES = ["attr_timeout=0", "entry_timeout=0", "dir_timeout=0", "negative_timeout=0"]
#: and for as long as a test may take: nothing expires while it runs
KEEP_CACHES = ["attr_timeout=60", "entry_timeout=60", "dir_timeout=60", "negative_timeout=60"]


def raw(mnt: Mount) -> list[str]:
    assert mnt.raw_store is not None
    return sorted(mnt.raw_store.keys())


def marker_mode(mnt: Mount, key: str) -> int | None:
    """The mode the marker `key` carries on the server (None: the store keeps no metadata on
    markers, as SeaweedFS 4.x)."""
    assert mnt.raw_store is not None
    if not store_keeps_marker_metadata(mnt.raw_store):
        return None
    return int(mnt.raw_store.head(key)[1]["mode"]) & 0o7777


def wait_until(what: str, cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_a_new_directory_is_there_before_its_marker(mount_factory: MountFactory) -> None:
    """Every cache of the mount expires at once, so each readdir and lookup below gets the
    server's answer, which lacks the directories: they are shown all the same, with the
    mode they were made with, and a file can be made in them."""
    mnt = mount_factory(options=[HOLD, *NO_CACHES])
    root = mnt.path
    os.mkdir(root / "d", 0o750)
    os.mkdir(root / "d" / "sub", 0o700)
    assert raw(mnt) == []
    assert mnt.status()["markers_queued"] == 2
    time.sleep(0.1)
    assert os.listdir(root) == ["d"]
    assert os.listdir(root / "d") == ["sub"]
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750
    assert stat.S_ISDIR(os.stat(root / "d" / "sub").st_mode)
    (root / "d" / "sub" / "f").write_bytes(b"in a directory the server does not know")
    assert raw(mnt) == []
    mnt.flush()
    assert raw(mnt) == ["d/", "d/sub/", "d/sub/f"]
    assert marker_mode(mnt, "d/") in (0o750, None)
    assert mnt.status()["markers_queued"] == 0
    if marker_mode(mnt, "d/sub/") is not None:
        mnt.remount()
        assert stat.S_IMODE(os.stat(root / "d" / "sub").st_mode) == 0o700


def send_markers(directory: Path) -> None:
    """fsync of a directory: every pending marker goes (files stay in the write-back)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def git_object(objects: Path, name: str, data: bytes, *, new_dir: bool = True) -> Path:
    """What git does to write a loose object: makes its tmp object in `xx/` (when there is
    no `xx/` yet, that fails and it makes `xx/` first), tries link(2) to the object's name (no
    hard links here), renames the tmp object instead, and reads it back."""
    xx, tmp = objects / name[:2], objects / name[:2] / "tmp_obj_1"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if new_dir:
        with pytest.raises(FileNotFoundError):
            os.open(tmp, flags, 0o444)
        os.mkdir(xx)
    fd = os.open(tmp, flags, 0o444)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    with pytest.raises(PermissionError):
        os.link(tmp, xx / name[2:])
    os.rename(tmp, xx / name[2:])
    assert (xx / name[2:]).read_bytes() == data
    return xx / name[2:]


@pytest.mark.parametrize("dir_timeout", [60, 0], ids=["listing-kept", "listing-expired"])
def test_git_objects_in_directories_listed_before_their_markers_went(
    mount_factory: MountFactory, dir_timeout: int
) -> None:
    """tests/fuse/test_tools.py::test_git: a readdir of `objects/` while the markers of its
    new `xx/` directories were pending got the server's listing, which lacks them; the kernel
    asks again for each name (entry_timeout=0), so once the markers went every lookup of an
    `xx/` was answered from that listing (dir_timeout=60): ENOENT, and git's next mkdir made
    an empty directory over the objects. With dir_timeout=0 the server is asked each time."""
    caches = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]
    mnt = mount_factory(options=[HOLD, *caches, f"dir_timeout={dir_timeout}"])
    objects = mnt.path / "objects"
    os.mkdir(objects)
    send_markers(mnt.path)
    blobs = {f"{i:02x}{'9de29b' * 3}": f"blob {i}\n".encode() for i in range(3)}
    made = [git_object(objects, name, data) for name, data in blobs.items()]
    assert sorted(os.listdir(objects)) == ["00", "01", "02"]
    assert raw(mnt) == ["objects/"]
    send_markers(mnt.path)
    assert raw(mnt) == ["objects/", "objects/00/", "objects/01/", "objects/02/"]
    for path, data in zip(made, blobs.values(), strict=True):
        assert os.listdir(path.parent) == [path.name]
        assert path.read_bytes() == data
        with pytest.raises(FileExistsError):
            os.mkdir(path.parent)
    # and git's way once more, in a directory whose marker went
    newer = git_object(objects, "01fe", b"blob 4\n", new_dir=False)
    mnt.flush()
    assert sorted(os.listdir(objects / "01")) == sorted(["fe", made[1].name])
    assert newer.read_bytes() == b"blob 4\n"
    assert len(raw(mnt)) == 1 + 3 + 4
    assert mnt.status()["markers_queued"] == 0


def test_the_marker_goes_up_on_its_own(mount_factory: MountFactory) -> None:
    mnt = mount_factory()
    os.mkdir(mnt.path / "d")
    wait_until("the marker", lambda: raw(mnt) == ["d/"], 10.0)
    assert mnt.status()["markers_queued"] == 0


def test_chmod_and_utime_before_the_marker_went_go_with_it(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=[HOLD])
    d = mnt.path / "d"
    os.mkdir(d, 0o700)
    os.chmod(d, 0o751)
    os.utime(d, (1_500_000_000, 1_500_000_000))
    assert raw(mnt) == []
    mnt.flush()
    assert raw(mnt) == ["d/"]
    if marker_mode(mnt, "d/") is None:
        return
    assert marker_mode(mnt, "d/") == 0o751
    mnt.remount()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o751
    assert os.stat(d).st_mtime == 1_500_000_000


def test_rmdir_of_a_tree_whose_markers_did_not_go(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=[HOLD])
    root = mnt.path
    os.makedirs(root / "a" / "b" / "c")
    with pytest.raises(OSError, match="not empty") as info:
        os.rmdir(root / "a")
    assert info.value.errno == errno.ENOTEMPTY
    subprocess.run(["rm", "-r", str(root / "a")], check=True)
    assert os.listdir(root) == []
    assert mnt.status()["markers_queued"] == 0
    mnt.flush()
    assert raw(mnt) == []


def test_a_name_deleted_then_made_a_directory_keeps_the_order(mount_factory: MountFactory) -> None:
    """`rm x; mkdir x` and `rmdir d; mkdir d` right after one another, markers sent at once:
    each marker waits for the queued delete of its name (SeaweedFS refuses a marker `x/`
    while a file `x` is there), so no attempt fails and both end as directories."""
    mnt = mount_factory()
    root = mnt.path
    (root / "x").write_bytes(b"file")
    os.mkdir(root / "d")
    mnt.flush()
    assert raw(mnt) == ["d/", "x"]
    for _ in range(3):
        os.unlink(root / "x")
        os.mkdir(root / "x")
        os.rmdir(root / "d")
        os.mkdir(root / "d")
        mnt.flush()
        assert raw(mnt) == ["d/", "x/"]
        os.rmdir(root / "x")
        (root / "x").write_bytes(b"file")
        mnt.flush()
        assert raw(mnt) == ["d/", "x"]
    assert "sending the marker" not in mnt.log.read_text(errors="replace")


def test_fsync_of_a_directory_sends_pending_markers(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=[HOLD])
    os.mkdir(mnt.path / "d")
    fd = os.open(mnt.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert raw(mnt) == ["d/"]


def test_unmount_and_sigterm_send_pending_markers(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=[HOLD])
    os.mkdir(mnt.path / "by-umount")
    assert raw(mnt) == []
    mnt.stop()
    assert raw(mnt) == ["by-umount/"]
    mnt.start()
    os.mkdir(mnt.path / "by-sigterm")
    assert mnt.proc is not None
    os.kill(mnt.proc.pid, signal.SIGTERM)
    assert mnt.proc.wait(timeout=60) == 0
    wait_until("the unmount", lambda: not is_mounted(mnt.path))
    mnt.proc = None
    assert raw(mnt) == ["by-sigterm/", "by-umount/"]


def test_a_failing_marker_is_shown_and_retried(tmp_path: Path) -> None:
    """The bucket goes away behind the mount: the marker's PUT fails, the directory stays,
    status says why, `bucketfs flush` fails; once the bucket is back the retry sends it.
    On the local store only: SeaweedFS makes a missing bucket again on a PUT into it."""
    with mount_factory_for(local_store_env(tmp_path / "store"), tmp_path / "mounts") as made:
        _failing_marker(made())


def _failing_marker(mnt: Mount) -> None:
    assert mnt.raw_store is not None
    mnt.raw_store.delete_bucket()
    os.mkdir(mnt.path / "d")
    assert (mnt.path / "d").is_dir()

    def failing() -> bool:
        return f"{mnt.bucket}/d/" in mnt.status()["failed"]

    wait_until("the failure in status", failing, 10.0)
    assert mnt.status()["markers_queued"] == 1
    with pytest.raises(OSError) as info:  # noqa: PT011 - any errno: the store's error
        os.setxattr(mnt.path, "user.bucketfs.flush", b"")
    assert info.value.errno != 0
    mnt.raw_store.create_bucket()
    wait_until("the retry", lambda: mnt.status()["markers_queued"] == 0, 20.0)
    assert mnt.status()["failed"] == {}
    assert raw(mnt) == ["d/"]


# --- requests counted between the mount and SeaweedFS ------------------------------------------


def test_mkdir_and_rmdir_before_the_marker_went_send_nothing(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mnt = s3_mounts(options=[f"endpoint={proxy.endpoint}", HOLD, *KEEP_CACHES])
    root = mnt.path
    os.listdir(root)  # the root's listing is known: the lookups below need no request
    before = proxy.snapshot()
    for i in range(20):
        os.mkdir(root / f"d{i}")
        os.mkdir(root / f"d{i}" / "sub")
    for i in range(20):
        os.rmdir(root / f"d{i}" / "sub")
        os.rmdir(root / f"d{i}")
    sent = proxy.snapshot().minus(before).requests
    assert sent == {}, sent
    mnt.flush()
    sent = proxy.snapshot().minus(before).requests
    assert (sent.get("PUT"), sent.get("DELETE"), sent.get("POST")) == (None, None, None), sent
    # with the markers sent, mkdir itself still sends nothing; they follow in parallel
    before = proxy.snapshot()
    for i in range(20):
        os.mkdir(root / f"e{i}")
    assert proxy.snapshot().minus(before).requests == {}
    mnt.flush()
    assert proxy.snapshot().minus(before).requests.get("PUT") == 20
    assert raw(mnt) == sorted(f"e{i}/" for i in range(20))
