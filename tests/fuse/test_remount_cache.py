"""What a mount keeps for the next mount of the same cache directory, through the kernel on
SeaweedFS with requests counted (scripts/benchlib/proxy.py): clean cached blocks (a file read
before the unmount is read again after it, page cache dropped, without a GET; one changed on
the server meanwhile is read anew: cache/store.py `_load`) and what HEADs said (`ls -l` after
a remount sends no HEAD for unchanged objects: cache/attrstore.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.helpers import MountFactory
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

MiB = 1 << 20


def _down(relay: CountingProxy) -> int:
    """Bytes the server sent (a LIST is a GET too, so GETs are not counted)."""
    return relay.snapshot().bytes_down


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return b"".join(iter(lambda: f.read(MiB), b""))


def _drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def test_clean_blocks_are_read_without_a_get_after_a_remount(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    assert mount.bucket is not None
    client = seaweed.client()
    kept, changed = os.urandom(24 * MiB + 3), os.urandom(3 * MiB)
    client.put_object(Bucket=mount.bucket, Key="kept.bin", Body=kept)
    client.put_object(Bucket=mount.bucket, Key="changed.bin", Body=changed)
    assert _read(mount.path / "kept.bin") == kept
    assert _read(mount.path / "changed.bin") == changed
    mount.stop()
    newer = os.urandom(3 * MiB)
    client.put_object(Bucket=mount.bucket, Key="changed.bin", Body=newer)  # another client
    _drop_page_cache()
    mount.start(reuse_cache=True)
    before = _down(proxy)
    assert _read(mount.path / "kept.bin") == kept
    # a listing and a HEAD: a few KiB; its 24 MiB came from the cache
    assert _down(proxy) - before < 256 << 10, "the remount fetched blocks its cache still had"
    before = _down(proxy)
    assert _read(mount.path / "changed.bin") == newer
    assert _down(proxy) - before >= 3 * MiB


def _heads(relay: CountingProxy) -> int:
    return relay.snapshot().requests.get("HEAD", 0)


def _ls_l(path: Path) -> dict[str, os.stat_result]:
    return {name: os.stat(path / name) for name in sorted(os.listdir(path))}


def _chmod_elsewhere(client: Any, bucket: str, key: str) -> None:
    """Another client changes one object's metadata only (mode 0755): same ETag and size, a
    later LastModified (a copy onto itself)."""
    client.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        Metadata={"mode": "33261"},
        MetadataDirective="REPLACE",
    )


def _remount_after_a_chmod_elsewhere(
    mount: Any, client: Any, proxy: CountingProxy, key: str
) -> int:
    """Unmount, let another client change `key`'s mode (`_chmod_elsewhere`), drop the page
    cache, mount the same cache directory again and look its directory up; the HEADs the
    proxy counted by then."""
    assert mount.bucket is not None
    mount.stop()
    _chmod_elsewhere(client, mount.bucket, key)
    _drop_page_cache()
    mount.start(reuse_cache=True)
    os.stat(mount.path / key.rsplit("/", 1)[0])  # the directory's own lookup is not counted
    return _heads(proxy)


def test_ls_l_after_a_remount_sends_no_head_for_unchanged_objects(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    assert mount.bucket is not None
    client = seaweed.client()
    names = [f"d/f{i:02d}" for i in range(30)]
    for key in names:
        client.put_object(Bucket=mount.bucket, Key=key, Body=b"x" * 10, Metadata={"mode": "33152"})
    time.sleep(2.2)  # HEADs are kept only when answered 2 s or more after LastModified
    first = _ls_l(mount.path / "d")
    assert {st.st_mode & 0o777 for st in first.values()} == {0o600}
    before = _remount_after_a_chmod_elsewhere(mount, client, proxy, "d/f07")
    again = _ls_l(mount.path / "d")
    assert _heads(proxy) - before == 1, "only the object changed meanwhile is asked for"
    assert again["f07"].st_mode & 0o777 == 0o755
    assert {n: st.st_mode for n, st in again.items() if n != "f07"} == {
        n: st.st_mode for n, st in first.items() if n != "f07"
    }
    assert {n: st.st_mtime for n, st in again.items() if n != "f07"} == {
        n: st.st_mtime for n, st in first.items() if n != "f07"
    }


def _lookups(mount: Any) -> int:
    return int(mount.status()["kernel_requests"].get("lookup", 0))


def test_ls_lR_after_a_remount_shows_kept_attributes_in_readdir_without_a_lookup_per_file(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """Once the kernel asks about listed files (ls -l of `a`), the next directories' files
    whose HEADs are kept come with their attributes in the readdir reply: `ls -l` of `b` sends
    no LOOKUP and no HEAD per file; one changed meanwhile is still asked (core/readdir.py
    `_kept_node`). `find` alone asks about no file and makes no node per file."""
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    assert mount.bucket is not None
    client = seaweed.client()
    for key in [f"{d}/f{i:02d}" for d in "abc" for i in range(30)]:
        client.put_object(Bucket=mount.bucket, Key=key, Body=b"x" * 10, Metadata={"mode": "33152"})
    time.sleep(2.2)  # HEADs are kept only when answered 2 s or more after LastModified
    first = {d: _ls_l(mount.path / d) for d in "abc"}
    mount.stop()
    _chmod_elsewhere(client, mount.bucket, "b/f07")
    _drop_page_cache()

    mount.start(reuse_cache=True)
    found = subprocess.run(
        ["find", str(mount.path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(found) == 1 + 3 + 90
    assert mount.status()["nodes"] < 30, "find made a node per file"

    mount.stop()
    _drop_page_cache()
    mount.start(reuse_cache=True)
    assert _ls_l(mount.path / "a") == first["a"]  # the kernel looks a's names up
    os.stat(mount.path / "b")  # the directory's own lookup is not what is counted
    lookups, heads = _lookups(mount), _heads(proxy)
    again = _ls_l(mount.path / "b")
    assert _heads(proxy) - heads == 1, "only the object changed meanwhile is asked for"
    assert _lookups(mount) - lookups <= 2, "a LOOKUP per file readdir could have answered"
    assert again["f07"].st_mode & 0o777 == 0o755
    # shown as nodes from kept HEADs: by readdir itself (kept_nodes), or through the prefetch
    # the one unkept name started, which answers kept names from their rows (found_nodes);
    # either way without a request (the HEAD count above)
    status = mount.status()
    assert status["kept_nodes"] + status["found_nodes"] >= 29
    assert {n: st for n, st in again.items() if n != "f07"} == {
        n: st for n, st in first["b"].items() if n != "f07"
    }


def test_stat_of_many_names_after_a_remount_sends_no_head_for_unchanged_objects(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`stat` by name (no readdir): once a lookup listed the directory, the other names are
    answered from that listing and the kept HEADs (core/resolve.py `_kept`), not one HEAD
    each; the object changed meanwhile is still asked."""
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    assert mount.bucket is not None
    client = seaweed.client()
    names = [f"f{i:02d}" for i in range(30)]
    for name in names:
        client.put_object(Bucket=mount.bucket, Key=f"d/{name}", Body=b"x" * 10)
    time.sleep(2.2)  # HEADs are kept only when answered 2 s or more after LastModified
    first = _ls_l(mount.path / "d")
    before = _remount_after_a_chmod_elsewhere(mount, client, proxy, "d/f20")
    again = {name: os.stat(mount.path / "d" / name) for name in names}
    # the first two names go as before (a HEAD beside a one-key LIST, then beside the
    # directory's listing), then f20 (changed); 30 before
    assert _heads(proxy) - before <= 4, "a HEAD per name a listing and a kept HEAD answer"
    assert again["f20"].st_mode & 0o777 == 0o755
    assert {n: (st.st_mode, st.st_mtime) for n, st in again.items() if n != "f20"} == {
        n: (st.st_mode, st.st_mtime) for n, st in first.items() if n != "f20"
    }
