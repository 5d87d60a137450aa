"""POSIX behaviour of the mount through the real kernel, checked with an independent client.

Every test runs against every store (`mnt` / `store_env` are parametrized). "On the server"
always means: seen by `mnt.store` (boto3 or a separate `LocalBackend`), never by the mount; a
`remount()` starts a new daemon with a fresh cache, so what it shows comes from the store.
Uploads are write-back (close returns at once, the upload follows): `mnt.store` runs `bucketfs
flush` before each read, `mnt.raw_store` does not (for the tests of when uploads happen).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.helpers import (
    Mount,
    MountFactory,
    StoreEnv,
    StoreError,
    store_keeps_marker_metadata,
)

MiB = 1024 * 1024


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def expect_errno(code: int | set[int], fn: object, *args: object) -> OSError:
    codes = {code} if isinstance(code, int) else code
    with pytest.raises(OSError) as info:  # noqa: PT011 - the errno is checked below
        fn(*args)  # type: ignore[operator]
    assert info.value.errno in codes, f"{info.value!r}: expected {sorted(codes)}"
    return info.value


# --- data ----------------------------------------------------------------------------------


def test_create_write_close_puts_object(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(300_000, seed=1)
    path = mnt.path / "new.bin"
    with open(path, "wb") as f:
        f.write(data)
    assert mnt.store.get("new.bin") == data
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == len(data)
    assert st.st_uid == os.getuid()
    (mnt.path / "empty").touch()
    assert mnt.store.head("empty")[0] == 0
    mnt.remount()
    assert path.read_bytes() == data
    assert (mnt.path / "empty").read_bytes() == b""
    assert sorted(os.listdir(mnt.path)) == ["empty", "new.bin"]


def test_read_anywhere_in_a_big_object(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(20 * MiB, seed=2)
    mnt.store.put("big.bin", data)
    rng = random.Random(3)
    fd = os.open(mnt.path / "big.bin", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == len(data)
        for _ in range(80):
            off = rng.randrange(len(data))
            n = rng.choice([1, 17, 4096, 128 * 1024, MiB + 3])
            assert os.pread(fd, n, off) == data[off : off + n], (off, n)
        assert os.pread(fd, 100, len(data) - 10) == data[-10:]
        assert os.pread(fd, 10, len(data)) == b""
        assert os.pread(fd, 10, len(data) + 12345) == b""
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        assert b"".join(chunks) == data
    finally:
        os.close(fd)


@pytest.mark.above_the_store
def test_overwrite_in_the_middle(mnt: Mount) -> None:
    assert mnt.store is not None
    data = bytearray(rand_bytes(100_000, seed=4))
    path = mnt.path / "f"
    path.write_bytes(data)
    with open(path, "r+b") as f:
        f.seek(50_000)
        f.write(b"X" * 1000)
    data[50_000:51_000] = b"X" * 1000
    assert mnt.store.get("f") == data
    assert path.read_bytes() == data
    mnt.remount()
    assert mnt.store.get("f") == data
    assert path.read_bytes() == data


@pytest.mark.above_the_store
def test_append(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "log"
    path.write_bytes(b"abc")
    with open(path, "ab") as f:
        f.write(b"def")
    assert mnt.store.get("log") == b"abcdef"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"ghi")  # O_APPEND: goes to the end whatever the offset
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcdefghi"
    assert mnt.store.get("log") == b"abcdefghi"


STAT_FIELDS = ("st_ino", "st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns")


def _fields(st: os.stat_result, fields: tuple[str, ...] = STAT_FIELDS) -> dict[str, int]:
    return {f: getattr(st, f) for f in fields}


@pytest.mark.above_the_store
def test_attributes_stay_put_when_nothing_changes(mnt: Mount) -> None:
    """tar, make and rsync compare a file's stat before and after reading it: the upload that
    follows close and the refresh of cached attributes must not change what stat says, the
    inode number included, while the kernel holds the inode (tar holds the file open while it
    reads; here it is open across the expiry of the name and attributes and the upload).

    The file stays open on purpose: the kernel forgets an inode as soon as nothing uses it
    and its name's entry expired (fuse's `d_delete`), and a name looked up again after that
    may get a new inode number (README, "How bucketfs differs from a local disk"). Closing it
    before the sleep made this test fail under load (st_ino 2 -> 3): the steps took over
    `entry_timeout` (1 s), so the close dropped the entry and the kernel sent FORGET."""
    path = mnt.path / "stable"
    path.write_bytes(rand_bytes(100_000, seed=11))
    os.chmod(path, 0o640)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    with open(path, "rb") as f:
        before = os.stat(path)
        f.read()
        time.sleep(1.5)  # past the default attr_timeout: attributes come from the daemon again
        after = os.stat(path)  # the name's entry expired too: a LOOKUP
        held = os.fstat(f.fileno())
    assert _fields(after) == _fields(before)
    assert _fields(held) == _fields(before)
    assert after.st_mtime == 1_600_000_000


@pytest.mark.above_the_store
def test_attributes_stay_put_when_the_kernel_forgot_the_inode(mount_factory: MountFactory) -> None:
    """The kernel may forget the inode of a name nothing uses (it did under load: FORGET
    right after a close); made to happen here by the node bound (`max_nodes`: the daemon asks
    the kernel to forget the coldest names). What the object stores (mode, owner, size,
    mtime) comes back the same on the next lookup; the inode number is a new one, and the
    ctime is the stored mtime again (S3 keeps no ctime; README)."""
    mnt = mount_factory(options=["max_nodes=2"])
    assert mnt.store is not None
    path = mnt.path / "forgotten"
    path.write_bytes(rand_bytes(10_000, seed=12))
    os.chmod(path, 0o640)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    before = os.stat(path)
    assert mnt.store.get("forgotten") == rand_bytes(10_000, seed=12)  # uploaded: not pinned
    for i in range(3):  # new nodes past the bound: the kernel is asked to forget the cold one
        (mnt.path / f"other{i}").write_bytes(b"y")
    time.sleep(0.5)  # the bound's invalidations run in a worker thread
    after = os.stat(path)
    kept = ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns")
    assert _fields(after, kept) == _fields(before, kept)
    assert after.st_mtime == 1_600_000_000


@pytest.mark.above_the_store
def test_holes_read_as_zeros(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "sparse"
    with open(path, "wb") as f:
        f.write(b"a")
        f.seek(3 * MiB)
        f.write(b"b")
    expected = b"a" + bytes(3 * MiB - 1) + b"b"
    assert os.stat(path).st_size == 3 * MiB + 1
    assert path.read_bytes() == expected
    assert mnt.store.get("sparse") == expected


@pytest.mark.above_the_store
def test_truncate_by_path(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(100_000, seed=5)
    path = mnt.path / "t"
    path.write_bytes(data)
    os.truncate(path, 1000)
    assert os.stat(path).st_size == 1000
    assert path.read_bytes() == data[:1000]
    os.truncate(path, 5000)
    expected = data[:1000] + bytes(4000)
    assert path.read_bytes() == expected
    mnt.remount()
    assert mnt.store.get("t") == expected
    assert path.read_bytes() == expected
    os.truncate(path, 0)
    assert path.read_bytes() == b""
    mnt.remount()
    assert mnt.store.get("t") == b""
    assert os.stat(path).st_size == 0


@pytest.mark.above_the_store
def test_ftruncate(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(50_000, seed=6)
    path = mnt.path / "ft"
    path.write_bytes(data)
    with open(path, "r+b") as f:
        f.truncate(10)
    assert mnt.store.get("ft") == data[:10]
    with open(path, "r+b") as f:
        f.truncate(20)
        f.seek(0, os.SEEK_END)
        f.write(b"end")
    assert mnt.store.get("ft") == data[:10] + bytes(10) + b"end"
    with open(path, "r+b") as f:
        f.truncate(0)
    assert mnt.store.get("ft") == b""
    assert path.read_bytes() == b""


@pytest.mark.above_the_store
def test_open_with_o_trunc(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "ot"
    path.write_bytes(b"hello world")
    with open(path, "wb") as f:
        f.write(b"hi")
    assert mnt.store.get("ot") == b"hi"
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    assert mnt.store.get("ot") == b""
    assert path.read_bytes() == b""


@pytest.mark.above_the_store
def test_o_excl_on_existing(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "x"
    path.write_bytes(b"1")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    with pytest.raises(FileExistsError):
        os.open(path, flags)
    mnt.store.put("from-client", b"2")  # never looked up through the mount
    with pytest.raises(FileExistsError):
        os.open(mnt.path / "from-client", flags)
    os.close(os.open(mnt.path / "fresh", flags))
    assert mnt.store.get("x") == b"1"
    assert mnt.store.get("from-client") == b"2"
    assert mnt.store.get("fresh") == b""


@pytest.mark.above_the_store
def test_fsync_uploads_before_returning(mnt: Mount) -> None:
    store = mnt.raw_store  # no `bucketfs flush`: fsync alone must have uploaded
    assert store is not None
    path = mnt.path / "synced"
    with open(path, "wb") as f:
        f.write(b"first")
        f.flush()
        os.fsync(f.fileno())
        assert store.get("synced") == b"first"
        f.write(b"-second")
        f.flush()
        os.fsync(f.fileno())
        assert store.get("synced") == b"first-second"


@pytest.mark.above_the_store
def test_close_starts_the_upload(mnt: Mount) -> None:
    """close() returns at once and the upload follows once the quiet period (writeback_delay,
    1 s) passed: no flush needed."""
    store = mnt.raw_store
    assert store is not None
    data = rand_bytes(200_000, seed=10)
    (mnt.path / "later").write_bytes(data)
    deadline = time.monotonic() + 15
    while not store.exists("later") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.get("later") == data
    deadline = time.monotonic() + 15
    while mnt.status()["dirty_files"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mnt.status()["dirty_files"] == 0, mnt.status()


# --- directories ---------------------------------------------------------------------------


def test_mkdir_writes_a_marker(mnt: Mount) -> None:
    assert mnt.store is not None
    os.mkdir(mnt.path / "d")
    os.mkdir(mnt.path / "d" / "e")
    keys = mnt.store.keys()
    assert "d/" in keys
    assert "d/e/" in keys
    assert mnt.store.head("d/")[0] == 0
    assert (mnt.path / "d").is_dir()
    mnt.remount()
    assert os.listdir(mnt.path) == ["d"]
    assert os.listdir(mnt.path / "d") == ["e"]
    assert os.listdir(mnt.path / "d" / "e") == []


@pytest.mark.above_the_store
def test_rmdir(mnt: Mount) -> None:
    assert mnt.store is not None
    d = mnt.path / "d"
    os.mkdir(d)
    (d / "f").write_bytes(b"x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d)
    assert mnt.store.get("d/f") == b"x"
    os.unlink(d / "f")
    os.rmdir(d)
    assert not d.exists()
    assert mnt.store.keys() == []
    mnt.store.put("e/x", b"y")  # a directory that exists only as a prefix
    before = mnt.store.keys()
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt.path / "e")
    assert mnt.store.keys() == before
    expect_errno(errno.ENOTDIR, os.rmdir, mnt.path / "e" / "x")


def test_prefix_only_directories_are_listed(mnt: Mount) -> None:
    assert mnt.store is not None
    mnt.store.put("p/q/file", b"deep")
    mnt.store.put("p/top", b"t")
    assert "p" in os.listdir(mnt.path)
    assert (mnt.path / "p").is_dir()
    assert sorted(os.listdir(mnt.path / "p")) == ["q", "top"]
    assert (mnt.path / "p" / "q").is_dir()
    assert os.listdir(mnt.path / "p" / "q") == ["file"]
    assert (mnt.path / "p" / "q" / "file").read_bytes() == b"deep"


def test_marker_without_children_is_an_empty_dir(mnt: Mount) -> None:
    assert mnt.store is not None
    mnt.store.put("empty/", b"")
    assert os.listdir(mnt.path) == ["empty"]
    assert (mnt.path / "empty").is_dir()
    assert os.listdir(mnt.path / "empty") == []


@pytest.mark.above_the_store
def test_a_name_another_client_made_is_found_once_the_listing_expired(mnt: Mount) -> None:
    """A lookup in a directory whose cached listing expired lists the directory again (one
    page): another client's new name is found, and the names made through the mount too."""
    assert mnt.store is not None
    (mnt.path / "d").mkdir()
    (mnt.path / "d" / "mine").write_bytes(b"1")
    assert os.listdir(mnt.path / "d") == ["mine"]  # the listing is cached now
    mnt.store.put("d/theirs", b"22")
    time.sleep(1.5)  # past dir_timeout, entry_timeout and negative_timeout (1 s each)
    assert os.stat(mnt.path / "d" / "theirs").st_size == 2
    assert (mnt.path / "d" / "mine").read_bytes() == b"1"
    assert sorted(os.listdir(mnt.path / "d")) == ["mine", "theirs"]


@pytest.mark.above_the_store
def test_new_files_across_directories_whose_listings_expired(mnt: Mount) -> None:
    """One new file in each of 12 directories after their listings expired: the lookups are
    answered by one recursive listing of the directories' parent (listing.py), which must
    show another client's file made meanwhile in one of them, and the files all land."""
    assert mnt.store is not None
    top = mnt.path / "w"
    for i in range(12):
        (top / f"d{i:02d}").mkdir(parents=True)
    mnt.store.put("w/d07/theirs", b"333")
    time.sleep(1.5)  # past dir_timeout, entry_timeout and negative_timeout (1 s each)
    for i in range(12):
        (top / f"d{i:02d}" / "f").write_bytes(b"x" * i)
    assert os.stat(top / "d07" / "theirs").st_size == 3
    assert mnt.status()["subtree_listings"] >= 1
    for i in range(12):
        assert mnt.store.get(f"w/d{i:02d}/f") == b"x" * i
    assert sorted(os.listdir(top / "d07")) == ["f", "theirs"]


@pytest.mark.above_the_store
def test_small_dirty_files_count_their_bytes_against_max_dirty(
    mount_factory: MountFactory,
) -> None:
    """40 files of 1 KiB with uploads deferred are 40 KiB dirty, under `max_dirty=1M`: the
    writer is not throttled into uploading them (counted as whole 1 MiB blocks they were
    40 MiB, and every write forced the uploads at once)."""
    mnt = mount_factory(options=["writeback_delay=120", "max_dirty=1M"])
    assert mnt.raw_store is not None
    for i in range(40):
        (mnt.path / f"f{i:02d}").write_bytes(bytes([i]) * 1024)
    status = mnt.status()
    assert status["dirty_files"] == 40
    assert status["dirty_bytes"] == 40 * 1024
    assert mnt.raw_store.keys() == []  # nothing was uploaded ahead of the delay


@pytest.mark.above_the_store
def test_random_reads_fetch_the_rest_of_the_file_in_the_background(mnt: Mount) -> None:
    """A few reads at random places start a fetch of the whole file (docs/cache.md): soon the
    cache holds all of it, and what the mount reads is the object."""
    assert mnt.store is not None
    data = rand_bytes(24 * MiB, seed=5)
    mnt.store.put("db.bin", data)
    with open(mnt.path / "db.bin", "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        for block in (20, 3, 17, 9, 1, 22):
            off = block * MiB + 123
            assert os.pread(f.fileno(), 4096, off) == data[off : off + 4096]
    deadline = time.monotonic() + 60
    while mnt.status()["cache_bytes"] < len(data):
        assert time.monotonic() < deadline, f"cache holds {mnt.status()['cache_bytes']} bytes"
        time.sleep(0.1)
    assert (mnt.path / "db.bin").read_bytes() == data


@pytest.mark.slow
def test_readdir_of_1100_objects(mnt: Mount) -> None:
    """Two listing pages (1,000 keys each on every store), each entry stat'ed with its size."""
    assert mnt.store is not None
    store = mnt.store
    names = [f"f{i:05d}" for i in range(1100)]
    sizes = {name: i % 300 for i, name in enumerate(names)}

    def put(name: str) -> None:
        store.put(f"many/{name}", b"z" * sizes[name])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, names))
    assert len([k for k in store.keys("many/") if not k.endswith("/")]) == len(names)
    assert sorted(os.listdir(mnt.path / "many")) == names
    with os.scandir(mnt.path / "many") as it:
        seen = {entry.name: entry.stat(follow_symlinks=False).st_size for entry in it}
    assert seen == sizes


# --- namespace changes ---------------------------------------------------------------------


@pytest.mark.above_the_store
def test_unlink_removes_the_object(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "gone"
    path.write_bytes(b"x")
    assert mnt.store.keys() == ["gone"]
    os.unlink(path)
    assert mnt.store.keys() == []
    assert not path.exists()
    assert os.listdir(mnt.path) == []
    expect_errno(errno.ENOENT, os.unlink, path)


def test_rename_file(mnt: Mount) -> None:
    assert mnt.store is not None
    p = mnt.path
    (p / "a").write_bytes(b"AAA")
    os.rename(p / "a", p / "b")
    assert mnt.store.keys() == ["b"]
    assert mnt.store.get("b") == b"AAA"
    assert not (p / "a").exists()
    (p / "c").write_bytes(b"CC")
    os.rename(p / "b", p / "c")  # replaces an existing target
    assert mnt.store.keys() == ["c"]
    assert mnt.store.get("c") == b"AAA"
    os.mkdir(p / "d")
    os.rename(p / "c", p / "d" / "c")
    assert mnt.store.keys() == ["d/", "d/c"]
    mnt.remount()
    assert (p / "d" / "c").read_bytes() == b"AAA"
    assert os.listdir(p) == ["d"]


def test_rename_directory_moves_every_key(mnt: Mount) -> None:
    assert mnt.store is not None
    src = mnt.path / "src"
    os.mkdir(src)
    os.mkdir(src / "sub")
    for i in range(25):
        (src / f"w{i:02d}").write_bytes(f"mount {i}".encode())
    for i in range(20):
        mnt.store.put(f"src/c{i:02d}", f"client {i}".encode())
    for i in range(5):
        (src / "sub" / f"s{i}").write_bytes(f"sub {i}".encode())
    before = mnt.store.keys()
    assert len(before) == 2 + 25 + 20 + 5
    os.rename(src, mnt.path / "dst")
    after = mnt.store.keys()
    assert after == sorted("dst/" + k.removeprefix("src/") for k in before)
    assert mnt.store.get("dst/c07") == b"client 7"
    assert not src.exists()
    assert (mnt.path / "dst" / "w03").read_bytes() == b"mount 3"
    assert (mnt.path / "dst" / "sub" / "s4").read_bytes() == b"sub 4"
    assert len(os.listdir(mnt.path / "dst")) == 46
    mnt.remount()
    assert os.listdir(mnt.path) == ["dst"]
    assert (mnt.path / "dst" / "c19").read_bytes() == b"client 19"


@pytest.mark.above_the_store
def test_rename_to_a_missing_parent(mnt: Mount) -> None:
    assert mnt.store is not None
    (mnt.path / "a").write_bytes(b"1")
    expect_errno(errno.ENOENT, os.rename, mnt.path / "a", mnt.path / "nope" / "a")
    assert mnt.store.keys() == ["a"]


# --- attributes in object metadata ---------------------------------------------------------


def test_chmod_chown_utime_persist_as_metadata(mnt: Mount) -> None:
    assert mnt.store is not None
    path = mnt.path / "f"
    path.write_bytes(b"data")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.utime(path, (1_600_000_000, 1_600_000_123.5))
    size, meta = mnt.store.head("f")
    assert size == 4
    assert int(meta["mode"]) == stat.S_IFREG | 0o640, meta
    assert meta["uid"] == "1234"
    assert meta["gid"] == "5678"
    assert abs(float(meta["mtime"]) - 1_600_000_123.5) < 1.0, meta
    mnt.remount()
    st = os.stat(path)
    assert st.st_mode == stat.S_IFREG | 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert abs(st.st_mtime - 1_600_000_123.5) < 1.0
    assert path.read_bytes() == b"data"


def test_directory_attributes(mnt: Mount) -> None:
    assert mnt.store is not None
    d = mnt.path / "d"
    os.mkdir(d)
    os.chmod(d, 0o750)
    os.chown(d, 1234, 5678)
    os.utime(d, (1_600_000_000, 1_600_000_000))
    st = os.stat(d)
    assert st.st_mode == stat.S_IFDIR | 0o750
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert abs(st.st_mtime - 1_600_000_000) < 1.0
    if not store_keeps_marker_metadata(mnt.store):
        return  # SeaweedFS drops user metadata on `dir/` keys: nothing more can persist
    meta = mnt.store.head("d/")[1]
    assert int(meta["mode"]) == stat.S_IFDIR | 0o750, meta
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert abs(float(meta["mtime"]) - 1_600_000_000) < 1.0
    mnt.remount()
    st = os.stat(d)
    assert st.st_mode == stat.S_IFDIR | 0o750
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert abs(st.st_mtime - 1_600_000_000) < 1.0


@pytest.mark.above_the_store
def test_another_clients_chmod_of_a_directory_is_seen_after_dir_attr_timeout(
    mount_factory: MountFactory,
) -> None:
    """A directory's own attributes are reused for `dir_attr_timeout`, then read again from
    its marker (where the store keeps marker metadata; SeaweedFS drops it)."""
    store = mount_factory.store_env.client(mount_factory.store_env.new_bucket())
    store.put("d/", b"", {"mode": str(stat.S_IFDIR | 0o750)})
    store.put("d/f", b"x")
    if not store_keeps_marker_metadata(store):
        return  # SeaweedFS: a marker has no mode to change (test_directory_attributes)
    mnt = mount_factory(store.bucket, options=["dir_attr_timeout=2"])
    assert os.stat(mnt.path / "d").st_mode == stat.S_IFDIR | 0o750
    store.put("d/", b"", {"mode": str(stat.S_IFDIR | 0o705)})  # another client's chmod
    time.sleep(1.5)  # attr_timeout passed, dir_attr_timeout not: still the old mode
    assert os.stat(mnt.path / "d").st_mode == stat.S_IFDIR | 0o750
    time.sleep(1.5)
    assert os.stat(mnt.path / "d").st_mode == stat.S_IFDIR | 0o705


@pytest.mark.above_the_store
def test_rm_rf_of_listed_files_of_every_size(mnt: Mount) -> None:
    """Listed files over 4,095 bytes keep their kernel entry (no lookup before unlinkat, no
    HEAD); smaller ones are looked up (they could be symlinks). Both kinds go."""
    assert mnt.store is not None
    for i in range(6):
        mnt.store.put(f"t/sub/f{i}", rand_bytes(5000 if i % 2 else 100, seed=i))
    mnt.store.put("t/keep-not", b"")
    assert sorted(os.listdir(mnt.path / "t" / "sub")) == [f"f{i}" for i in range(6)]
    subprocess.run(["rm", "-rf", str(mnt.path / "t")], check=True, timeout=60)
    assert not (mnt.path / "t").exists()
    assert mnt.store.keys("t/") == []


def test_metadata_written_by_another_tool(mnt: Mount) -> None:
    assert mnt.store is not None
    meta = {"mode": str(0o100600), "uid": "1234", "gid": "4321", "mtime": "1700000000"}
    mnt.store.put("foreign", b"abc", meta)
    mnt.store.put("fraction", b"", {**meta, "mtime": "1700000000.25"})
    st = os.stat(mnt.path / "foreign")
    assert st.st_mode == 0o100600
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert st.st_mtime == 1_700_000_000
    assert st.st_size == 3
    assert abs(os.stat(mnt.path / "fraction").st_mtime - 1_700_000_000.25) < 0.001


@pytest.mark.above_the_store
def test_mount_options_give_defaults(mount_factory: MountFactory) -> None:
    store = mount_factory.store_env.client(mount_factory.store_env.new_bucket())
    store.put("plain", b"x")
    store.put("dir/", b"")
    mnt = mount_factory(
        store.bucket, options=["uid=1234", "gid=5678", "file_mode=0600", "dir_mode=0700"]
    )
    st = os.stat(mnt.path / "plain")
    assert (st.st_uid, st.st_gid, st.st_mode) == (1234, 5678, stat.S_IFREG | 0o600)
    st = os.stat(mnt.path / "dir")
    assert (st.st_uid, st.st_gid, st.st_mode) == (1234, 5678, stat.S_IFDIR | 0o700)


def test_symlinks(mnt: Mount) -> None:
    assert mnt.store is not None
    link = mnt.path / "link"
    os.symlink("some/target", link)
    assert os.readlink(link) == "some/target"
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    assert mnt.store.get("link") == b"some/target"
    assert stat.S_ISLNK(int(mnt.store.head("link")[1]["mode"]))
    mnt.store.put("flink", b"../x", {"mode": str(stat.S_IFLNK | 0o777)})
    mnt.remount()
    assert os.readlink(link) == "some/target"
    assert os.readlink(mnt.path / "flink") == "../x"
    assert stat.S_ISLNK(os.lstat(mnt.path / "flink").st_mode)
    (mnt.path / "real").write_bytes(b"through")
    os.symlink("real", mnt.path / "rel")
    assert (mnt.path / "rel").read_bytes() == b"through"


def test_statvfs(mnt: Mount) -> None:
    sv = os.statvfs(mnt.path)
    assert sv.f_blocks > 0
    assert sv.f_bavail > 0
    assert sv.f_files > 0


@pytest.mark.above_the_store
def test_unlinked_file_stays_readable_while_open(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(300_000, seed=7)
    path = mnt.path / "ghost"
    path.write_bytes(data)
    with open(path, "rb") as f:
        assert f.read(10) == data[:10]
        os.unlink(path)
        assert not path.exists()
        assert f.read() == data[10:]
        f.seek(1234)
        assert f.read(100) == data[1234:1334]
    assert mnt.store.keys() == []


def test_unlinked_object_from_the_store_stays_readable_while_open(mnt: Mount) -> None:
    assert mnt.store is not None
    data = rand_bytes(300_000, seed=8)
    mnt.store.put("ghost", data)
    with open(mnt.path / "ghost", "rb") as f:
        os.unlink(mnt.path / "ghost")
        assert f.read() == data
    assert mnt.store.keys() == []


# --- names ---------------------------------------------------------------------------------


def valid_segment(seg: str) -> bool:
    return seg not in ("", ".", "..") and len(seg.encode()) <= 255 and "\0" not in seg


def test_keys_with_invalid_segments_are_skipped(mnt: Mount) -> None:
    assert mnt.store is not None
    good = {"ok.txt": b"1", "x/ok.txt": b"2", "long/ok": b"3", "bad/ok": b"4"}
    for key, data in good.items():
        mnt.store.put(key, data)
    bad = ["bad//name", "x/./y", "x/../y", "long/" + "a" * 300, "/lead"]
    for key in bad:
        with contextlib.suppress(StoreError):  # refused or normalized: check what it holds
            mnt.store.put(key, b"bad")
    stored = mnt.store.keys()
    required: dict[str, set[str]] = {}  # dir -> names that must be listed
    optional: dict[str, set[str]] = {}  # dir -> names that may be listed (valid prefixes)
    for key in stored:
        segs = key.split("/")
        ok = all(valid_segment(s) for s in segs)
        for depth, seg in enumerate(segs):
            parent = "/".join(segs[:depth])
            if not valid_segment(seg):
                break
            (required if ok else optional).setdefault(parent, set()).add(seg)
    for parent, names in required.items():
        listed = set(os.listdir(mnt.path / parent))
        assert names <= listed, (parent, stored)
        assert listed <= names | optional.get(parent, set()), (parent, stored)
    for key, data in good.items():
        assert (mnt.path / key).read_bytes() == data


@pytest.mark.above_the_store
def test_name_length_limit(mnt: Mount) -> None:
    assert mnt.store is not None
    expect_errno(errno.ENAMETOOLONG, open, mnt.path / ("n" * 256), "wb")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, mnt.path / ("d" * 256))
    expect_errno(errno.ENAMETOOLONG, open, mnt.path / ("é" * 128), "wb")  # 256 bytes
    longest = "m" * 255
    (mnt.path / longest).write_bytes(b"ok")
    assert mnt.store.keys() == [longest]
    assert os.listdir(mnt.path) == [longest]


def test_key_that_is_file_and_prefix(mnt: Mount) -> None:
    """Both "both" and "both/child" exist: the directory wins, the child is readable."""
    assert mnt.store is not None
    mnt.store.put("both", b"file")
    try:
        mnt.store.put("both/child", b"child")
    except StoreError:  # this store cannot hold both: the file must stay intact
        assert mnt.store.keys() == ["both"]
        assert os.listdir(mnt.path) == ["both"]
        assert (mnt.path / "both").read_bytes() == b"file"
        return
    assert mnt.store.keys() == ["both", "both/child"]
    assert os.listdir(mnt.path) == ["both"]
    assert (mnt.path / "both").is_dir()
    assert os.listdir(mnt.path / "both") == ["child"]
    assert (mnt.path / "both" / "child").read_bytes() == b"child"


# --- sources and options -------------------------------------------------------------------


def test_store_root_shows_every_bucket(mount_factory: MountFactory) -> None:
    store_env: StoreEnv = mount_factory.store_env
    existing = store_env.client(store_env.new_bucket())
    existing.put("obj", b"in bucket")
    mnt = mount_factory(new_bucket=False)
    assert existing.bucket in os.listdir(mnt.path)
    assert (mnt.path / existing.bucket / "obj").read_bytes() == b"in bucket"
    name = f"mk-{existing.bucket}"[:63]
    created = store_env.client(name)
    os.mkdir(mnt.path / name)
    assert created.bucket_exists()
    (mnt.path / name / "f").write_bytes(b"x")
    mnt.flush()
    assert created.get("f") == b"x"
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt.path / name)
    assert created.bucket_exists()
    os.unlink(mnt.path / name / "f")
    os.rmdir(mnt.path / name)
    assert not created.bucket_exists()
    assert name not in os.listdir(mnt.path)


def test_prefix_mount(mount_factory: MountFactory) -> None:
    store = mount_factory.store_env.client(mount_factory.store_env.new_bucket())
    for key in ("pre/fix/a", "pre/fix/sub/b", "pre/other", "pre/fixture", "top"):
        store.put(key, key.encode())
    mnt = mount_factory(store.bucket, prefix="pre/fix")
    assert sorted(os.listdir(mnt.path)) == ["a", "sub"]
    assert (mnt.path / "a").read_bytes() == b"pre/fix/a"
    assert (mnt.path / "sub" / "b").read_bytes() == b"pre/fix/sub/b"
    (mnt.path / "new").write_bytes(b"n")
    os.mkdir(mnt.path / "nd")
    mnt.flush()
    assert store.get("pre/fix/new") == b"n"
    assert "pre/fix/nd/" in store.keys("pre/")
    assert not store.exists("new")


@pytest.mark.above_the_store
def test_read_only_mount(mount_factory: MountFactory) -> None:
    store = mount_factory.store_env.client(mount_factory.store_env.new_bucket())
    store.put("f", b"ro")
    store.put("d/", b"")
    mnt = mount_factory(store.bucket, options=["ro"])
    assert (mnt.path / "f").read_bytes() == b"ro"
    expect_errno(errno.EROFS, open, mnt.path / "f", "wb")
    expect_errno(errno.EROFS, open, mnt.path / "g", "wb")
    expect_errno(errno.EROFS, os.mkdir, mnt.path / "e")
    expect_errno(errno.EROFS, os.unlink, mnt.path / "f")
    expect_errno(errno.EROFS, os.rmdir, mnt.path / "d")
    expect_errno(errno.EROFS, os.chmod, mnt.path / "f", 0o600)
    expect_errno(errno.EROFS, os.rename, mnt.path / "f", mnt.path / "h")
    assert store.keys() == ["d/", "f"]
    assert store.get("f") == b"ro"


def test_object_deleted_behind_the_mount(mnt: Mount, mount_factory: MountFactory) -> None:
    assert mnt.store is not None
    assert mnt.proc is not None
    mount_factory.fail_on_tracebacks = False  # errors are the point here; only liveness counts
    data = rand_bytes(300_000, seed=9)
    mnt.store.put("victim", data)
    assert os.stat(mnt.path / "victim").st_size == len(data)  # attributes now cached
    mnt.store.delete("victim")

    def read_it() -> bytes:
        with open(mnt.path / "victim", "rb") as f:
            return f.read()

    expect_errno({errno.ENOENT, errno.EIO, errno.ESTALE}, read_it)
    assert mnt.proc.poll() is None, "daemon died"
    (mnt.path / "after").write_bytes(b"still alive")
    assert (mnt.path / "after").read_bytes() == b"still alive"
    assert "after" in os.listdir(mnt.path)
    assert mnt.store.get("after") == b"still alive"
