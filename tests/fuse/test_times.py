"""Times, sizes and links as POSIX says, through a real mount on every store.

- `utimensat` keeps atime and mtime apart; atime is stored as s3fs stores it (metadata
  `atime`) and a read never changes it (a mount is noatime by nature);
- creating, removing or renaming an entry moves its directory's mtime and ctime;
- a size past the store's largest object is EFBIG, and the file keeps its size;
- an unlinked file still open shows `st_nlink` 0.

The EFBIG test must not be checked against a daemon without the limit by running it: that
daemon accepts the size and starts uploading terabytes of zeros. It was checked by hand.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.support.helpers import Mount, StoreEnv

#: the largest object of each store (bucketfs/backends: S3's 5 TiB; Swift's static large
#: object of 1,000 segments of 5 GiB; the local store takes S3's)
LARGEST = {"local": 5 * 1024**4, "s3": 5 * 1024**4, "swift": 1000 * 5 * 1024**3}

ATIME = 1_600_000_000_123_456_789
MTIME = 1_700_000_000_987_654_321


def near(ns: int, expected: int) -> bool:
    """Times are kept as float seconds (as in the metadata): within a microsecond."""
    return abs(ns - expected) < 1000


def test_atime_is_kept_apart_from_mtime_and_reads_leave_it(mnt: Mount) -> None:
    f = mnt.path / "f"
    f.write_bytes(b"data")
    os.utime(f, ns=(ATIME, MTIME))
    st = os.stat(f)
    assert near(st.st_atime_ns, ATIME)
    assert near(st.st_mtime_ns, MTIME)
    assert f.read_bytes() == b"data"  # noatime: a read is not an access time
    mnt.flush()
    store = mnt.store
    assert store is not None
    meta = store.head("f")[1]
    assert float(meta["atime"]) == pytest.approx(ATIME / 1e9)
    assert float(meta["mtime"]) == pytest.approx(MTIME / 1e9)
    os.utime(f, ns=(MTIME, MTIME))  # the atime alone (touch -a)
    mnt.remount()  # a fresh daemon and cache: what the object says
    st = os.stat(f)
    assert near(st.st_atime_ns, MTIME)
    assert near(st.st_mtime_ns, MTIME)


def test_a_directory_changes_with_its_entries(mnt: Mount) -> None:
    d, e = mnt.path / "d", mnt.path / "e"
    d.mkdir()
    e.mkdir()
    steps = [
        (d, lambda: (d / "f").write_bytes(b"x")),
        (d, lambda: (d / "sub").mkdir()),
        (d, lambda: os.symlink("f", d / "link")),
        (d, lambda: os.rename(d / "f", d / "g")),
        (e, lambda: os.rename(d / "g", e / "g")),
        (e, lambda: os.unlink(e / "g")),
        (d, lambda: os.rmdir(d / "sub")),
    ]
    for directory, step in steps:
        os.utime(directory, (1_000_000_000, 1_000_000_000))
        changed = os.stat(directory).st_ctime_ns  # the utime's own change
        before = time.time() - 2
        step()
        st = os.stat(directory)
        assert st.st_mtime > before, step
        assert st.st_ctime_ns > changed, step


def test_a_directory_time_is_stored_with_its_next_marker_write(mnt: Mount) -> None:
    d = mnt.path / "d"
    d.mkdir()
    os.utime(d, (1_000_000_000, 1_000_000_000))
    before = time.time() - 2
    (d / "f").write_bytes(b"x")
    os.chmod(d, 0o750)  # writes the marker, with the mtime the new entry gave it
    mnt.remount()  # SeaweedFS keeps no metadata on markers: their date is the chmod's
    assert os.stat(d).st_mtime > before


def test_a_size_past_the_largest_object_is_efbig(store_env: StoreEnv, mnt: Mount) -> None:
    largest = LARGEST[store_env.kind]
    f = mnt.path / "f"
    f.write_bytes(b"abc")
    with pytest.raises(OSError) as by_path:  # noqa: PT011 - the errno is checked below
        os.truncate(f, largest + 1)
    assert by_path.value.errno == errno.EFBIG
    fd = os.open(f, os.O_RDWR)
    try:
        with pytest.raises(OSError) as by_fd:  # noqa: PT011
            os.ftruncate(fd, largest + 1)
        assert by_fd.value.errno == errno.EFBIG
        with pytest.raises(OSError) as by_write:  # noqa: PT011
            os.pwrite(fd, b"x", largest)
        assert by_write.value.errno == errno.EFBIG
        assert os.fstat(fd).st_size == 3
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 3
    store = mnt.store
    assert store is not None
    assert store.get("f") == b"abc"


def test_an_unlinked_open_file_has_no_link(mnt: Mount) -> None:
    f: Path = mnt.path / "f"
    f.write_bytes(b"still here")
    mnt.flush()
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_nlink == 1
        os.unlink(f)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 0) == b"still here"
    finally:
        os.close(fd)
