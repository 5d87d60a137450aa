"""Requests a workload sends, counted between a real mount and SeaweedFS (issue 14, item 3:
"fewer requests, each with a test that counts them"); the relay is the bench's
(scripts/benchlib/proxy.py), which tells a LIST from a GET (`Counts.kinds`).

The cuts: an exclusive create (GNU tar's every file) answered from a fresh listing, the
upload's `If-None-Match: *` keeping it exclusive (core/handles.py `_exclusive`); a lookup
needs only the kind, so `rm -rf` sends no HEAD for entries of a sure kind and does not
prefetch their metadata (core/prefetch.py); `stat` of many names lists the directory once
(listing.py `Listings.worth_listing`), and a name its expired listing showed as a file is
asked with its HEAD alone (listing.py `FileNames`); opening a small file to read is one GET
that brings its attributes and bytes (core/handles.py `_see_now`). Each test fails without
its cut.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.helpers import Mount, MountFactory, require_tool
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy, Counts

#: nothing expires while a test runs: what is counted is what a cut saves, not freshness
KEEP = ["attr_timeout=60", "entry_timeout=60", "dir_timeout=60", "negative_timeout=60"]
N = 30


def counted(proxy: CountingProxy, s3_mounts: MountFactory, *options: str) -> Mount:
    return s3_mounts(options=[f"endpoint={proxy.endpoint}", *KEEP, *options])


def sent(proxy: CountingProxy, before: Counts) -> dict[str, int]:
    return proxy.snapshot().minus(before).kinds


def tarball(names: list[str], size: int = 100) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({name.rpartition("/")[0] for name in names if "/" in name})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in names:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o640, 1_000_000_000
            tar.addfile(info, io.BytesIO(b"x" * size))
    return out.getvalue()


def test_untar_sends_no_list_per_file(proxy: CountingProxy, s3_mounts: MountFactory) -> None:
    """GNU tar creates every file with O_CREAT|O_EXCL: in a directory tar just made, or one
    whose listing is fresh, the create is answered from the listing; If-None-Match: * on
    the upload keeps it exclusive between clients."""
    mnt = counted(proxy, s3_mounts, "writeback_delay=3600")  # one PUT each, at the flush
    os.listdir(mnt.path)
    data = tarball([f"t/f{i:02d}" for i in range(N)] + [f"u{i:02d}" for i in range(N)])
    before = proxy.snapshot()
    subprocess.run(
        [require_tool("tar"), "-x", "-C", str(mnt.path)], input=data, check=True, timeout=120
    )
    extracted = sent(proxy, before)
    mnt.flush()
    total = sent(proxy, before)
    assert "LIST" not in extracted, extracted  # was one per file: 60
    assert total.get("PUT", 0) == 2 * N + 1, total  # the files and t/'s marker
    assert sorted(os.listdir(mnt.path / "t")) == [f"f{i:02d}" for i in range(N)]
    assert (mnt.path / "u07").read_bytes() == b"x" * 100


def test_rm_rf_sends_no_head_for_entries_of_a_sure_kind(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """Another client's directory of small files (a listing leaves their kind unsure: a
    symlink's object is small) and large ones (sure: files): `rm -rf` looks each small one up
    (one HEAD, for its kind) and deletes the large ones without a HEAD; the lookups of the
    small ones do not prefetch the large ones' metadata."""
    mnt = counted(proxy, s3_mounts)
    store = mnt.raw_store
    assert store is not None
    for i in range(N):
        store.put(f"r/small{i:02d}", b"s" * 10)
        store.put(f"r/big{i:02d}", b"b" * 5000)
        store.put(f"r/sub/big{i:02d}", b"b" * 5000)
    os.listdir(mnt.path)
    before = proxy.snapshot()
    subprocess.run([require_tool("rm"), "-rf", str(mnt.path / "r")], check=True, timeout=120)
    mnt.flush()
    removed = sent(proxy, before)
    assert store.keys("r/") == []
    # one per small file, and r/'s and r/sub/'s markers (none here: HEADs that find nothing)
    assert removed.get("HEAD", 0) <= N + 2, removed  # was 2 * N + 2


def test_stat_of_many_names_lists_once(proxy: CountingProxy, s3_mounts: MountFactory) -> None:
    """`stat` of every name in a directory the mount has not listed: from the second name
    on, one LIST answers whether each exists (and a HEAD per file its metadata), not a LIST
    of `name/` per name. A name absent from that listing is still asked by name (a name
    another client just made is seen at once), unless a readdir listed the directory."""
    mnt = counted(proxy, s3_mounts)
    store = mnt.raw_store
    assert store is not None
    for i in range(N):
        store.put(f"s/f{i:02d}", b"x" * 10)
    os.stat(mnt.path / "s")
    before = proxy.snapshot()
    for i in range(N):
        assert os.stat(mnt.path / "s" / f"f{i:02d}").st_size == 10
    stats = sent(proxy, before)
    assert stats == {"HEAD": N, "LIST": 2}, stats  # was N HEADs and N LISTs
    store.put("s/late", b"y")  # another client, after that listing
    before = proxy.snapshot()
    assert os.stat(mnt.path / "s" / "late").st_size == 1
    for i in range(3):
        assert not (mnt.path / "s" / f"missing{i}").exists()
    by_name = sent(proxy, before)
    assert by_name.get("LIST") == 4, by_name  # a LIST of `name/` each (and a HEAD)
    assert by_name.get("HEAD", 0) <= 4, by_name
    os.listdir(mnt.path / "s")  # a readdir: its listing answers absent names too
    before = proxy.snapshot()
    for i in range(3, 6):
        assert not (mnt.path / "s" / f"missing{i}").exists()
    assert sent(proxy, before) == {}


def test_stats_spread_over_directories_whose_listings_expired_send_a_head_each(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`stat` of files spread over many directories, each directory met again after its
    listing expired (the bench's stat_1000): a name the directory's last listing showed as
    a file is asked with its HEAD alone, not with a LIST of the directory again beside it
    (core/resolve.py, listing.FileNames). The directories share no ancestor within
    listing.LEVELS, as in a tree too large for a subtree listing (the bench's 10,000 keys)."""
    dirs, files = 8, 6

    def path(d: int, i: int) -> str:
        return f"w{d}/x/y/z/f{i}"

    mnt = counted(proxy, s3_mounts, "dir_timeout=0.3")
    store = mnt.raw_store
    assert store is not None
    for d in range(dirs):
        for i in range(files):
            store.put(path(d, i), b"x" * (d + i))
    for d in range(dirs):  # two names each: the second lists the directory (worth_listing)
        for i in range(2):
            assert os.stat(mnt.path / path(d, i)).st_size == d + i
    before = proxy.snapshot()
    for i in range(2, files):
        time.sleep(0.4)  # every listing expired
        for d in range(dirs):
            assert os.stat(mnt.path / path(d, i)).st_size == d + i
    stats = sent(proxy, before)
    assert stats == {"HEAD": dirs * (files - 2)}, stats  # was a LIST beside each HEAD


def test_cat_of_a_small_file_sends_one_get_at_open(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """Opening a small file to read asks the server (close-to-open) with one GET that brings
    its attributes and its bytes, not a HEAD then a GET; another client's change is seen at
    the next open; a file the cache holds is asked with a HEAD (nothing to fetch)."""
    mnt = counted(proxy, s3_mounts)
    store = mnt.raw_store
    assert store is not None
    for i in range(N):
        store.put(f"c/f{i:02d}", b"c" * 100)
    os.listdir(mnt.path / "c")
    before = proxy.snapshot()
    for i in range(N):
        assert (mnt.path / "c" / f"f{i:02d}").read_bytes() == b"c" * 100
    read = sent(proxy, before)
    # the lookups' HEADs (a small file's kind), then one GET at each open: was 2 * N HEADs
    assert read == {"HEAD": N, "GET": N}, read
    store.put("c/f03", b"new" * 50)  # another client
    before = proxy.snapshot()
    assert (mnt.path / "c" / "f03").read_bytes() == b"new" * 50
    assert (mnt.path / "c" / "f04").read_bytes() == b"c" * 100  # unchanged: in the cache
    again = sent(proxy, before)
    # each a HEAD (the cache held both): f03's shows a new ETag, whose bytes one GET brings
    assert again == {"HEAD": 2, "GET": 1}, again
    mnt.stop()
    mnt.start(reuse_cache=True)
    os.stat(mnt.path / "c" / "f04")
    time.sleep(0.1)  # so that the open does not reuse the lookup's HEAD (OPEN_REUSES_HEAD)
    before = proxy.snapshot()
    assert (mnt.path / "c" / "f04").read_bytes() == b"c" * 100
    assert "GET" not in sent(proxy, before)  # the cache kept its bytes: a HEAD, no GET


def test_ls_lR_sends_one_head_per_file_and_status_counts_the_kernel_requests(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`ls -lR` over directories of small files: one HEAD per file (the prefetch started by
    the first lookup in each directory), and `bucketfs status` counts what the kernel sent:
    a LOOKUP of each small file of the first directory (a listing leaves its kind unsure),
    none in the others (their readdir replies carry the HEADs' attributes once the kernel
    asks about files: core/readdir.py `ahead`), and only two GETXATTRs (`ls -l` asks every
    entry's security label and ACL until told "unsupported")."""
    dirs, per = 6, 10
    mnt = counted(proxy, s3_mounts)
    store = mnt.raw_store
    assert store is not None
    for d in range(dirs):
        for i in range(per):
            store.put(f"w/d{d}/f{i:02d}", b"z" * (10 + i))
    os.listdir(mnt.path)
    kernel = mnt.status()["kernel_requests"]
    before = proxy.snapshot()
    out = subprocess.run(
        [require_tool("ls"), "-lR", str(mnt.path / "w")],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    walked = sent(proxy, before)
    after = mnt.status()["kernel_requests"]
    asked = {op: after.get(op, 0) - kernel.get(op, 0) for op in after}
    assert out.count(" 19 ") >= dirs  # f09's size in every directory
    assert walked.get("HEAD", 0) <= dirs * per + dirs + 1, walked  # files, markers of w/ d*/
    assert per <= asked.get("lookup", 0) <= per + dirs + 2, asked
    assert asked.get("readdir", 0) >= dirs + 1, asked
    assert 2 <= asked.get("getxattr", 0) <= 4, asked  # and the status read's own


def test_stats_spread_over_sibling_directories_list_each_at_its_first_lookup(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`stat` of files spread over many never-listed sibling directories (the bench's cold
    stat_1000): once 3 siblings were relisted at their second lookup, the first lookup in
    another starts its listing in the background (core/resolve.py), so that the second
    lookup there sends the name's HEAD alone instead of waiting for that LIST beside it. The
    same requests in all. The siblings hold more keys than a subtree listing takes (as the
    bench's tree), or their parent would be listed recursively instead."""
    dirs, keys = 5, 610
    mnt = counted(proxy, s3_mounts)
    client, bucket, top = seaweed.client(), mnt.bucket, mnt.path / "t"
    names = [f"t/d{k}/f{j:03d}" for k in range(dirs) for j in range(keys)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), names))
    for k in range(dirs):  # the directories' own lookups (a marker HEAD each) are not counted
        os.stat(top / f"d{k}")
    for k in range(3):  # the second name lists the directory (worth_listing), beside its HEAD
        for j in range(2):
            assert os.stat(top / f"d{k}" / f"f{j:03d}").st_size == 1
    before = proxy.snapshot()
    assert os.stat(top / "d3" / "f000").st_size == 1  # a HEAD, a LIST of `f000/` and d3's
    deadline = time.monotonic() + 5.0
    while sent(proxy, before).get("LIST", 0) < 2:
        assert time.monotonic() < deadline, sent(proxy, before)
        time.sleep(0.01)
    assert sent(proxy, before) == {"HEAD": 1, "LIST": 2}
    assert os.stat(top / "d3" / "f001").st_size == 1
    assert sent(proxy, before) == {"HEAD": 2, "LIST": 2}  # the same requests as before
    before = proxy.snapshot()
    assert os.stat(top / "d4" / "f000").st_size == 1
    assert os.stat(top / "d4" / "f001").st_size == 1  # waits for d4's listing if under way
    assert sent(proxy, before) == {"HEAD": 2, "LIST": 2}


def test_getfattr_d_and_cp_a_out_send_no_head_for_checksums(
    proxy: CountingProxy, s3_mounts: MountFactory, tmp_path: Path
) -> None:
    """Listing attributes (`getfattr -d`, `cp -a`, `rsync -X`) asks the store nothing for the
    read-only fields: the checksums, one HEAD per file when they were listed, are read by
    name only (they are not what a copy carries: xattrs.py). `cp -a` sends one HEAD per file
    still: its open's (close-to-open)."""
    mnt = counted(proxy, s3_mounts)
    for d in ("listed", "copied"):
        (mnt.path / d).mkdir()
        for i in range(N):
            (mnt.path / d / f"f{i:02d}.txt").write_bytes(b"x" * 100)
    mnt.flush()
    before = proxy.snapshot()
    getfattr = require_tool("getfattr")
    dump = [getfattr, "-R", "-d", "-m", "-", str(mnt.path / "listed")]
    subprocess.run(dump, check=True, timeout=60)
    listed = sent(proxy, before)
    assert "HEAD" not in listed, listed  # was one per file: 30
    before = proxy.snapshot()
    cp = [require_tool("cp"), "-a", str(mnt.path / "copied"), str(tmp_path / "out")]
    subprocess.run(cp, check=True, timeout=60)
    copied = sent(proxy, before)
    assert copied.get("HEAD", 0) == N, copied  # was two per file: 60
