"""`-o attrs=listing` through a real mount, on the local store and SeaweedFS (requests
counted there by the bench's relay, scripts/benchlib/proxy.py).

With it, `ls -l`, `stat` of every file after a readdir, `du` and `find -ls` of a directory send
no HEAD: one LIST page per directory listed. Files show the listing's size and LastModified
(mtime = ctime = atime), the mount's default modes and owner, never the POSIX metadata another
tool stored; what is set through the mount is still stored on the object (a full mount sees
it); symlinks cannot be made (a listing could not show them).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support.helpers import (
    LocalStoreClient,
    Mount,
    MountFactory,
    S3StoreClient,
    StoreClient,
    StoreEnv,
    local_or_s3_env,
    require_tool,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

OLD = 1_000_000_000
#: what another tool stored on every object (s3fs/rclone/bucketfs keys)
STORED = {"mode": str(stat.S_IFREG | 0o600), "uid": "1234", "gid": "4321", "mtime": str(OLD)}
N = 40
#: long enough that nothing here expires mid-test on a loaded machine: what is counted is the
#: requests a listing's attributes save, not their freshness
STEADY = ["attr_timeout=60", "entry_timeout=60", "dir_timeout=60"]


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


def listing(store: StoreClient, prefix: str) -> dict[str, tuple[int, float]]:
    """key -> (size, LastModified) as the store's own listing says."""
    if isinstance(store, S3StoreClient):
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=prefix
        )
        return {
            o["Key"]: (o["Size"], o["LastModified"].timestamp())
            for page in pages
            for o in page.get("Contents", [])
        }
    assert isinstance(store, LocalStoreClient)
    from bucketfs.backends.local.backend import LocalBackend

    async def main() -> dict[str, tuple[int, float]]:
        backend = LocalBackend(store.root)
        try:
            page = await backend.list_page(store.bucket, prefix, delimiter=None)
            assert page.next_token is None
            return {o.key: (o.size, o.last_modified) for o in page.objects}
        finally:
            await backend.aclose()

    return trio.run(main)


def fill(store: StoreClient) -> None:
    for i in range(N):
        store.put(f"d/f{i:03d}", b"x" * i, {**STORED, "colour": "blue"})
    store.put("d/sub/inner", b"y", STORED)


def requests(relay: CountingProxy | None) -> dict[str, int]:
    return dict(relay.snapshot().requests) if relay is not None else {}


def counted_mount(
    mount_factory: MountFactory, store_env: StoreEnv, request: pytest.FixtureRequest
) -> tuple[Mount, CountingProxy | None]:
    """An attrs=listing mount of a bucket another tool filled (`fill`), its requests counted
    on SeaweedFS."""
    relay: CountingProxy | None = None
    options = ["attrs=listing", *STEADY]
    if store_env.kind == "s3":
        relay = request.getfixturevalue("proxy")
        options.append(f"endpoint={relay.endpoint}")
    mnt = mount_factory(options=options)
    assert mnt.raw_store is not None
    fill(mnt.raw_store)
    return mnt, relay


def test_ls_l_stat_du_find_send_no_head(
    mount_factory: MountFactory, store_env: StoreEnv, request: pytest.FixtureRequest
) -> None:
    mnt, relay = counted_mount(mount_factory, store_env, request)
    d = mnt.path / "d"
    os.stat(d)  # the lookup of d itself (a HEAD and a LIST: it was not listed)
    before = requests(relay)
    out = subprocess.run(
        [require_tool("ls"), "-ln", "--time-style=+%s", str(d)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    stats = {p.name: p.stat() for p in d.iterdir()}  # readdir, then a stat of each
    assert set(stats) == {f"f{i:03d}" for i in range(N)} | {"sub"}
    if relay is not None:
        # one LIST page for each readdir (ls, iterdir), no HEAD at all
        assert requests(relay) == {**before, "GET": before.get("GET", 0) + 2}
    assert out.count("\n-rw-r--r-- 1 ") == N, out
    assert mnt.raw_store is not None
    listed = listing(mnt.raw_store, "d/")
    for name, st in stats.items():
        if name == "sub":
            assert stat.S_IMODE(st.st_mode) == 0o755
            assert stat.S_ISDIR(st.st_mode)
            continue
        size, modified = listed[f"d/{name}"]
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o644  # 0666 & ~umask 022, not the stored 0600
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())  # not 1234:4321
        assert st.st_size == size
        assert st.st_mtime == pytest.approx(modified, abs=1e-6)
        assert st.st_ctime == st.st_atime == st.st_mtime
    before = requests(relay)
    subprocess.run([require_tool("du"), "-s", str(d)], check=True, timeout=60, capture_output=True)
    subprocess.run(
        [require_tool("find"), str(d), "-ls"], check=True, timeout=60, capture_output=True
    )
    if relay is not None:
        after = requests(relay)
        assert "HEAD" not in {k for k, v in after.items() if v != before.get(k, 0)}, after
        assert after.get("GET", 0) - before.get("GET", 0) <= 4  # d and d/sub, each twice


def test_the_full_mode_heads_every_listed_file(
    proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """The contrast that shows the counting sees HEADs: the default mode sends one per file
    and shows the stored attributes."""
    relay = proxy
    mnt = s3_mounts(options=["attrs=full", *STEADY, f"endpoint={relay.endpoint}"])
    assert mnt.raw_store is not None
    fill(mnt.raw_store)
    d = mnt.path / "d"
    os.stat(d)
    before = requests(relay).get("HEAD", 0)
    stats = {p.name: p.stat() for p in d.iterdir()}
    assert requests(relay).get("HEAD", 0) - before >= N
    assert stat.S_IMODE(stats["f000"].st_mode) == 0o600
    assert stats["f000"].st_mtime == OLD


def test_what_is_set_through_the_mount_is_stored_for_a_full_mount(
    mount_factory: MountFactory,
) -> None:
    mnt = mount_factory(options=["attrs=listing"])
    f = mnt.path / "f"
    f.write_bytes(b"data")
    os.chmod(f, 0o600)
    os.utime(f, (OLD, OLD))
    with pytest.raises(PermissionError) as info:
        os.symlink("f", mnt.path / "link")
    assert info.value.errno == errno.EPERM
    mnt.flush()
    store = mnt.store
    assert store is not None
    meta = store.head("f")[1]
    assert meta["mode"] == str(stat.S_IFREG | 0o600)
    assert float(meta["mtime"]) == OLD
    assert not store.exists("link")
    full = mount_factory(mnt.bucket, options=[])
    st = os.stat(full.path / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o600, OLD)
