"""One upload per save, through a real mount on the local store and SeaweedFS.

A shell's `echo v > f` opens f with O_TRUNC, duplicates the descriptor onto stdout and closes
the original (the kernel sends FLUSH), writes, then closes stdout (FLUSH, then RELEASE). Only
the release of the last writable handle may start an upload: a FLUSH of the first descriptor
would store the truncated, empty file as a version of its own. Without a quiet period
(`writeback_delay=0`) every save must be exactly one version, none empty, and `bucketfs
status` counts one upload per save; with one (the default), saves within it merge: one
upload, one version with the last content, still none empty.
"""

from __future__ import annotations

import os
import subprocess
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


def sh(mnt: Mount, script: str) -> None:
    subprocess.run([require_tool("sh"), "-c", script], cwd=mnt.path, check=True, timeout=60)


def versions_of(mnt: Mount, key: str) -> list[bytes]:
    """Every version of `key` on the server, oldest first."""
    raw = mnt.raw_store
    if isinstance(raw, S3StoreClient):
        listed = raw.client.list_object_versions(Bucket=raw.bucket, Prefix=key)
        # S3 lists the versions of a key newest first (SeaweedFS stamps them to the second)
        found = [v for v in listed.get("Versions", []) if v["Key"] == key][::-1]
        return [
            raw.client.get_object(Bucket=raw.bucket, Key=key, VersionId=v["VersionId"])[
                "Body"
            ].read()
            for v in found
        ]
    tree = mnt.path / ".versions" / key  # the local store: through the mount's own tree
    return [(tree / name).read_bytes() for name in sorted(os.listdir(tree))]


def enable_versioning(mnt: Mount) -> None:
    raw = mnt.raw_store
    if isinstance(raw, S3StoreClient):
        raw.client.put_bucket_versioning(
            Bucket=raw.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    else:
        os.setxattr(mnt.path, NS + "versioning", b"Enabled")


def test_each_shell_save_is_one_version(mount_factory: MountFactory) -> None:
    """No quiet period: each save is due at its release, the next `>` waits for its upload."""
    mnt = mount_factory(options=["writeback_delay=0"])
    enable_versioning(mnt)
    sh(mnt, "for v in 1 2 3; do echo $v > f; done")
    mnt.flush()
    assert versions_of(mnt, "f") == [b"1\n", b"2\n", b"3\n"]


def test_a_save_is_one_upload(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=["writeback_delay=0"])
    before = mnt.status()["uploads"]
    sh(mnt, "echo a > new; echo b > new; printf c >> new; for v in 1 2 3; do echo $v > g; done")
    mnt.flush()
    assert mnt.status()["uploads"] - before == 6
    assert (mnt.path / "new").read_bytes() == b"b\nc"
    assert mnt.status()["uploads"] - before == 6


def test_saves_within_the_quiet_period_merge(mnt: Mount) -> None:
    """The default quiet period: saves in quick succession are one upload and one version (the
    last content, never an empty one); a save left alone past the quiet period is a version of
    its own, and the next save waits for its upload if it is under way."""
    enable_versioning(mnt)
    before = mnt.status()["uploads"]
    sh(mnt, "echo a > new; echo b > new; printf c >> new; for v in 1 2 3; do echo $v > f; done")
    mnt.flush()
    assert mnt.status()["uploads"] - before == 2
    assert (mnt.path / "new").read_bytes() == b"b\nc"
    assert versions_of(mnt, "f") == [b"3\n"]
    sh(mnt, "echo 4 > f; sleep 1.5; echo 5 > f")
    mnt.flush()
    assert versions_of(mnt, "f") == [b"3\n", b"4\n", b"5\n"]
    assert mnt.status()["uploads"] - before == 4
