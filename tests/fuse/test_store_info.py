"""What the store says about a bucket, through a real mount: `df` (os.statvfs) figures from
Swift (usage, and the quota set with the Swift API), the local store (usage and its disk's free
space) and S3 (the fixed figures); `df` answering at once while the server holds its answer;
and the bucket's metadata as xattrs of the bucket directory (Swift container metadata,
checked with plain HTTP; refused on SeaweedFS and the local store, which keep none).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from bucketfs.core.storeinfo import DF_TTL, DF_WAIT
from tests.support.crash import HoldingProxy, wait_for
from tests.support.helpers import (
    Mount,
    MountFactory,
    StoreEnv,
    local_or_s3_env,
    mount_factory_for,
    require_tool,
)
from tests.support.swift_fixtures import SwiftStoreClient, swift_store_env
from tests.support.swift_server import SwiftServer

NS = "user.bucketfs."
BLOCK = 4096
PLENTY_BLOCKS = 1 << 38  # StatFs's default: 1 PiB in 4 KiB blocks


def used(path: Path) -> tuple[int, int]:
    """(blocks, files) that df shows as used."""
    sv = os.statvfs(path)
    assert sv.f_frsize == BLOCK
    return sv.f_blocks - sv.f_bfree, sv.f_files - sv.f_ffree


def refused(path: Path, name: str, value: bytes | None = None, *, remove: bool = False) -> int:
    try:
        if remove:
            os.removexattr(path, name)
        elif value is None:
            os.getxattr(path, name)
        else:
            os.setxattr(path, name, value)
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{name} on {path} was not refused")


def container_meta(client: SwiftStoreClient, bucket: str) -> dict[str, str]:
    """The container's X-Container-Meta-* as Swift has it (plain HTTP, no bucketfs code)."""
    _, headers, _ = client._call("HEAD", quote(bucket, safe=""))
    prefix = "x-container-meta-"
    return {k.lower()[len(prefix) :]: v for k, v in headers.items() if k.lower().startswith(prefix)}


def post_container(client: SwiftStoreClient, bucket: str, headers: dict[str, str]) -> None:
    client._call("POST", quote(bucket, safe=""), headers=headers)


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    """`mnt` on the stores without bucket figures from a HEAD (Swift's tests say so)."""
    return local_or_s3_env(request, tmp_path)


@pytest.fixture
def swift_env(swift: SwiftServer) -> StoreEnv:
    return swift_store_env(swift)


@pytest.fixture
def swift_mounts(swift_env: StoreEnv, tmp_path: Path) -> Iterator[MountFactory]:
    with mount_factory_for(swift_env, tmp_path / "mounts") as made:
        yield made


# --- df ------------------------------------------------------------------------------------


def test_df_shows_the_container_usage_and_quota(
    swift: SwiftServer, swift_env: StoreEnv, swift_mounts: MountFactory
) -> None:
    bucket = swift_env.new_bucket()
    client = SwiftStoreClient(swift, bucket)
    quota = 1 << 20
    post_container(
        client,
        bucket,
        {"X-Container-Meta-Quota-Bytes": str(quota), "X-Container-Meta-Quota-Count": "10"},
    )
    mnt = swift_mounts(bucket)
    (mnt.path / "a").write_bytes(b"x" * 10000)
    (mnt.path / "b").write_bytes(b"y")
    mnt.flush()
    sv = os.statvfs(mnt.path)  # the first df: what the store says now
    # the quota is the total, free what is left of it: 10001 bytes in 3 blocks
    assert sv.f_blocks * sv.f_frsize == quota
    assert (sv.f_blocks - sv.f_bfree, sv.f_files, sv.f_ffree) == (3, 10, 8)
    assert sv.f_bavail == sv.f_bfree
    # the same figures as read-only attributes of the mount root
    assert os.getxattr(mnt.path, NS + "quota_bytes") == str(quota).encode()
    assert os.getxattr(mnt.path, NS + "quota_count") == b"10"
    assert os.getxattr(mnt.path, NS + "bytes_used") == b"10001"
    assert os.getxattr(mnt.path, NS + "object_count") == b"2"
    assert refused(mnt.path, NS + "quota_bytes", b"1") == errno.EPERM
    # without a quota: what is used on top of the fixed "plenty" free
    post_container(client, bucket, {"X-Remove-Container-Meta-Quota-Bytes": "x"})
    post_container(client, bucket, {"X-Remove-Container-Meta-Quota-Count": "x"})
    assert refused(mnt.path, NS + "quota_bytes") == errno.ENODATA
    time.sleep(DF_TTL + 0.2)
    os.statvfs(mnt.path)  # stale: answered with the old figures, refreshed behind
    wait_for("df without the quota", lambda: os.statvfs(mnt.path).f_bfree == PLENTY_BLOCKS, 10)
    assert used(mnt.path) == (3, 2)


def test_df_of_a_whole_account_mount_shows_the_account(
    swift: SwiftServer, swift_env: StoreEnv, swift_mounts: MountFactory
) -> None:
    client = SwiftStoreClient(swift, "unused")
    quota = 10 << 30
    client._call("POST", "", headers={"X-Account-Meta-Quota-Bytes": str(quota)})
    try:
        mnt = swift_mounts(new_bucket=False)
        sv = os.statvfs(mnt.path)
        _, headers, _ = client._call("HEAD", "")
        account = {k.lower(): v for k, v in headers.items()}
        assert sv.f_blocks * sv.f_frsize == quota
        account_used = int(account["x-account-bytes-used"])
        assert sv.f_blocks - sv.f_bfree == -(-account_used // BLOCK)
        assert sv.f_files - sv.f_ffree == int(account["x-account-object-count"])
    finally:
        client._call("POST", "", headers={"X-Remove-Account-Meta-Quota-Bytes": "x"})


def test_df_of_the_local_store_and_s3(store_env: StoreEnv, mnt: Mount, tmp_path: Path) -> None:
    (mnt.path / "a").write_bytes(b"x" * 10000)
    mnt.flush()
    sv = os.statvfs(mnt.path)
    if store_env.kind == "s3":  # no cheap usage request: the documented fixed figures
        assert (sv.f_blocks, sv.f_bfree, sv.f_files - sv.f_ffree) == (PLENTY_BLOCKS,) * 2 + (0,)
        assert refused(mnt.path, NS + "bytes_used") == errno.ENODATA
        return
    # used: the bucket's objects; free: the free space of the disk the store lives on
    disk = os.statvfs(tmp_path / "store")
    assert sv.f_blocks - sv.f_bfree == 3
    assert abs(sv.f_bavail * sv.f_frsize - disk.f_bavail * disk.f_frsize) < 64 << 20
    assert sv.f_blocks * sv.f_frsize < disk.f_blocks * disk.f_frsize + (1 << 20)
    assert sv.f_files - sv.f_ffree == 1
    assert os.getxattr(mnt.path, NS + "bytes_used") == b"10000"
    assert os.getxattr(mnt.path, NS + "object_count") == b"1"


def _proxied_swift(swift: SwiftServer, proxy: HoldingProxy) -> StoreEnv:
    """Swift as the daemon reaches it through `proxy`: tempauth builds the storage URL from
    the Host the client asked, so every request of the daemon goes through the proxy."""
    env = swift_store_env(swift)
    env.env = dict(env.env, ST_AUTH=f"{proxy.endpoint}/auth/v1.0")
    return env


def _is_container_head(line: bytes) -> bool:
    parts = line.split()
    return len(parts) > 1 and parts[0] == b"HEAD" and parts[1].count(b"/") == 3


def test_df_answers_at_once_while_the_server_holds_its_answer(
    swift: SwiftServer, tmp_path: Path
) -> None:
    proxy = HoldingProxy(int(swift.endpoint.rsplit(":", 1)[1]))
    try:
        env = _proxied_swift(swift, proxy)
        with mount_factory_for(env, tmp_path / "mounts") as mounts:
            mnt = mounts()
            (mnt.path / "a").write_bytes(b"x" * 10000)
            mnt.flush()
            # no figures yet and the container HEAD is held: the defaults within DF_WAIT
            proxy.arm(_is_container_head)
            started = time.monotonic()
            sv = os.statvfs(mnt.path)
            assert time.monotonic() - started < DF_WAIT + 1.5
            assert (sv.f_blocks, sv.f_bfree) == (PLENTY_BLOCKS, PLENTY_BLOCKS)
            wait_for("the HEAD held", lambda: proxy.held_bytes > 0, 10)
            proxy.release()
            wait_for("the figures", lambda: used(mnt.path) == (3, 1), 10, step=0.2)
            # stale figures while the server holds the refresh: the old ones, at once
            time.sleep(DF_TTL + 0.2)
            proxy.arm(_is_container_head)
            started = time.monotonic()
            for _ in range(5):
                assert used(mnt.path) == (3, 1)
            assert time.monotonic() - started < 1.0
            wait_for("the refresh held", lambda: proxy.held_bytes > 0, 10)
            started = time.monotonic()
            assert used(mnt.path) == (3, 1)
            assert time.monotonic() - started < 0.5
            proxy.release()
    finally:
        proxy.close()


# --- bucket metadata as xattrs --------------------------------------------------------------


def test_container_metadata_on_the_mount_root(
    swift: SwiftServer, swift_env: StoreEnv, swift_mounts: MountFactory
) -> None:
    setfattr = require_tool("setfattr")
    getfattr = require_tool("getfattr")
    mnt = swift_mounts()
    assert mnt.bucket is not None
    client = SwiftStoreClient(swift, mnt.bucket)
    # setfattr sets it with a POST, seen by any Swift client
    done = subprocess.run(
        [setfattr, "-n", "user.team", "-v", "ops", str(mnt.path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert container_meta(client, mnt.bucket)["team"] == "ops"
    # what another client sets is seen at once
    post_container(
        client,
        mnt.bucket,
        {
            # urllib sends header values as Latin-1: these are the UTF-8 bytes of "Ann Ö"
            "X-Container-Meta-Owner": "Ann Ö".encode().decode("latin-1"),
            "X-Container-Meta-Temp-URL-Key": "secret",
        },
    )
    assert os.getxattr(mnt.path, "user.owner") == "Ann Ö".encode()
    # nothing listed: the container's metadata is the container's, not the directory's (a
    # `rsync -aX SRC/ MNT/` would remove what SRC lacks: its quota-bytes too); all by name
    assert os.listxattr(mnt.path) == []
    assert os.getxattr(mnt.path, NS + "versioning") == b"Off"
    assert int(os.getxattr(mnt.path, NS + "object_count")) >= 0
    # a Temp-URL key is a credential: never shown
    assert refused(mnt.path, "user.temp-url-key") == errno.ENODATA
    assert refused(mnt.path, "user.temp-url-key", b"mine") == errno.EINVAL
    assert container_meta(client, mnt.bucket)["temp-url-key"] == "secret"
    dump = subprocess.run(
        [getfattr, "-d", "-m", "-", str(mnt.path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert dump.returncode == 0, dump.stderr
    assert "team" not in dump.stdout
    assert "secret" not in dump.stdout
    # Swift drops a header whose name holds '_': refused rather than lost
    assert refused(mnt.path, "user.a_b", b"v") == errno.EINVAL
    assert refused(mnt.path, NS + "object_count", b"1") == errno.EPERM
    os.removexattr(mnt.path, "user.team")
    assert "team" not in container_meta(client, mnt.bucket)
    assert refused(mnt.path, "user.team", remove=True) == errno.ENODATA
    assert "a read-only attribute" in mnt.log.read_text(errors="replace")


def test_rsync_x_onto_the_mount_root_keeps_the_container_metadata(
    swift: SwiftServer, swift_env: StoreEnv, swift_mounts: MountFactory, tmp_path: Path
) -> None:
    """`rsync -aX SRC/ MNT/` removes from MNT/ every listed user.* name SRC lacks: the mount
    root lists none of the container's metadata, so its quota and keys stay."""
    rsync = require_tool("rsync")
    mnt = swift_mounts()
    assert mnt.bucket is not None
    client = SwiftStoreClient(swift, mnt.bucket)
    post_container(
        client, mnt.bucket, {"X-Container-Meta-Quota-Bytes": "1000000", "X-Container-Meta-K": "v"}
    )
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.colour", b"blue")
    done = subprocess.run(
        [rsync, "-aX", f"{src}/", f"{mnt.path}/"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    meta = container_meta(client, mnt.bucket)
    assert meta["quota-bytes"] == "1000000"
    assert meta["k"] == "v"
    assert os.getxattr(mnt.path / "f", "user.colour") == b"blue"
    assert os.getxattr(mnt.path, "user.k") == b"v"  # still there by name


def test_container_metadata_on_bucket_directories_of_an_account_mount(
    swift: SwiftServer, swift_env: StoreEnv, swift_mounts: MountFactory
) -> None:
    bucket = swift_env.new_bucket()
    client = SwiftStoreClient(swift, bucket)
    mnt = swift_mounts(new_bucket=False)
    top = mnt.path / bucket
    os.setxattr(top, "user.project", b"apollo")
    assert container_meta(client, bucket)["project"] == "apollo"
    assert os.getxattr(top, "user.project") == b"apollo"
    assert os.getxattr(top, NS + "versioning") == b"Off"
    assert os.listxattr(top) == []  # the container's, read by name
    assert os.listxattr(mnt.path) == []
    # the root of a whole-account mount is the account, not a container
    assert refused(mnt.path, "user.project", b"x") == errno.EOPNOTSUPP
    os.removexattr(top, "user.project")
    assert "project" not in container_meta(client, bucket)


def test_bucket_metadata_refused_where_the_store_keeps_none(
    store_env: StoreEnv, mnt: Mount
) -> None:
    # SeaweedFS has bucket tags, but they are not mapped (README: a tag set is replaced as a
    # whole, so a setfattr could drop a tag another client just added); the local store keeps
    # no bucket metadata
    assert refused(mnt.path, "user.team", b"ops") == errno.EOPNOTSUPP
    assert refused(mnt.path, "user.team") == errno.ENODATA
    assert os.listxattr(mnt.path) == []  # versioning is read by name: a copy carries nothing
    assert os.getxattr(mnt.path, NS + "versioning") == b"Off"
    assert "keeps no metadata on buckets" in mnt.log.read_text(errors="replace")
