"""Warm `stat`s through the kernel on SeaweedFS, requests counted (scripts/benchlib/proxy.py):
once the attributes expired, one LIST of the directory confirms every file whose ETag, size
and LastModified it shows unchanged (core/revalidate.py), instead of a HEAD per file; another
client's metadata change (a copy onto itself: a new LastModified) and content change still
show within the README's bound, 2 x attr_timeout."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.helpers import MountFactory
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

N = 50
#: the default timeouts (1 s each): past every one of them, the kernel's included
EXPIRED = 2.2
#: scheduling on a loaded machine, on top of the stated bound
SLACK = 1.5


def _stat_all(d: Path) -> dict[str, os.stat_result]:
    return {f"f{i:02d}": os.stat(d / f"f{i:02d}") for i in range(N)}


def test_warm_stats_send_one_listing_and_still_see_other_clients_changes(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    bucket, client, d = mount.bucket, seaweed.client(), mount.path / "d"
    for i in range(N):
        client.put_object(
            Bucket=bucket, Key=f"d/f{i:02d}", Body=b"x" * 10, Metadata={"mode": "33152"}
        )
    time.sleep(2.2)  # a HEAD vouches for a listing only when answered 2 s after LastModified
    first = _stat_all(d)  # a HEAD each (and a LIST of `name/`: nothing was listed)
    assert {st.st_mode & 0o777 for st in first.values()} == {0o600}
    for _ in range(2):
        time.sleep(EXPIRED)
        os.stat(d)  # the directory's own lookup is not what is counted
        before = proxy.snapshot()
        again = _stat_all(d)
        sent = proxy.snapshot().minus(before).requests
        assert sent == {"GET": 1}, "one LIST of the directory, no HEAD"
        assert {n: (st.st_mode, st.st_size, st.st_mtime) for n, st in again.items()} == {
            n: (st.st_mode, st.st_size, st.st_mtime) for n, st in first.items()
        }

    # another client: a metadata-only change (same ETag and size) and a content change
    client.copy_object(
        Bucket=bucket,
        Key="d/f07",
        CopySource={"Bucket": bucket, "Key": "d/f07"},
        Metadata={"mode": "33261"},
        MetadataDirective="REPLACE",
    )
    client.put_object(
        Bucket=bucket, Key="d/f08", Body=b"longer content", Metadata={"mode": "33152"}
    )
    start = time.monotonic()
    while (os.stat(d / "f07").st_mode & 0o777, os.stat(d / "f08").st_size) != (0o755, 14):
        assert time.monotonic() - start <= 2.0 + SLACK, "not seen within 2 x attr_timeout"
        time.sleep(0.02)
    assert {os.stat(d / f"f{i:02d}").st_mode & 0o777 for i in range(N) if i != 7} == {0o600}


#: sibling directories, the files of each the test stats, and the keys each holds: in all
#: more than a subtree listing takes (listing.PAGES pages), as in the bench's tree, or a
#: recursive LIST of their parent would answer for all of them at once
DIRS = 5
FILES = 5
KEYS = 610


def test_warm_stats_over_many_directories_list_the_others_ahead(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`stat` of files spread over many sibling directories: once a third directory had to be
    listed to revalidate, the others whose files the kernel knows are listed at once, in the
    background (not one LIST after the other as their files come up), with no more requests
    in all; a single directory's files list only that directory. (Entries are kept 30 s:
    the kernel asks GETATTR, and no directory lookup sends a LIST of its own.)"""
    options = [f"endpoint={proxy.endpoint}", "entry_timeout=30", "dir_timeout=30"]
    mount = s3_mounts(options=options)
    bucket, client, top = mount.bucket, seaweed.client(), mount.path / "t"
    keys = [f"t/d{k}/f{j:03d}" for k in range(DIRS) for j in range(KEYS)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))
    time.sleep(2.2)  # a HEAD vouches for a listing only when answered 2 s after LastModified
    names = [f"t/d{k}/f{j:03d}" for k in range(DIRS) for j in range(FILES)]
    first = {name: os.stat(mount.path / name) for name in names}  # a HEAD each

    time.sleep(EXPIRED)
    before = proxy.snapshot()
    for j in range(FILES):
        os.stat(top / "d0" / f"f{j:03d}")
    assert proxy.snapshot().minus(before).kinds == {"LIST": 1}, "d0 alone is listed"

    time.sleep(EXPIRED)
    before = proxy.snapshot()
    for k in range(3):  # the third directory listed starts the others'
        os.stat(top / f"d{k}" / "f000")
    deadline = time.monotonic() + 5.0
    while proxy.snapshot().minus(before).kinds.get("LIST", 0) < DIRS:
        assert time.monotonic() < deadline, proxy.snapshot().minus(before).kinds
        time.sleep(0.01)
    again = {name: os.stat(mount.path / name) for name in names}
    assert proxy.snapshot().minus(before).kinds == {"LIST": DIRS}, "no HEAD, no second LIST"
    assert {n: (st.st_mode, st.st_size, st.st_mtime) for n, st in again.items()} == {
        n: (st.st_mode, st.st_size, st.st_mtime) for n, st in first.items()
    }
