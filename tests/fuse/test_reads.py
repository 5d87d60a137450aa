"""The read path through a real mount on SeaweedFS, requests counted by the bench's relay
(scripts/benchlib/proxy.py): a cold sequential read is a few large GETs whatever order the
kernel's readahead requests arrive in; an unchanged object is read again from the kernel's page
cache, a changed one is not (close-to-open)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.helpers import MountFactory
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

MiB = 1 << 20


def _gets(relay: CountingProxy) -> int:
    return relay.snapshot().requests.get("GET", 0)


def _read(path: Path) -> bytes:
    parts = []
    with open(path, "rb", buffering=0) as f:
        while part := f.read(MiB):
            parts.append(part)
    return b"".join(parts)


def test_a_cold_sequential_read_is_a_few_large_gets(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    assert mount.bucket is not None
    body = os.urandom(80 * MiB)
    seaweed.client().put_object(Bucket=mount.bucket, Key="big.bin", Body=body)
    before = _gets(proxy)
    assert _read(mount.path / "big.bin") == body
    gets = _gets(proxy) - before
    # 16 MiB parts once the window has grown (a few smaller ones first): 951 GETs of ~1 MiB
    # for 1 GiB before
    assert 0 < gets <= 12, gets
    assert _read(mount.path / "big.bin") == body
    assert _gets(proxy) - before == gets  # read again: from the caches, no GET


def test_an_object_changed_on_the_server_is_not_read_from_the_page_cache(
    seaweed: SeaweedServer, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts()
    assert mount.bucket is not None
    client = seaweed.client()
    client.put_object(Bucket=mount.bucket, Key="f.bin", Body=b"a" * (3 * MiB))
    path = mount.path / "f.bin"
    assert _read(path) == b"a" * (3 * MiB)
    assert _read(path) == b"a" * (3 * MiB)  # kept in the page cache (same ETag)
    resident = subprocess.run(
        ["fincore", "-b", "-n", "-o", "RES", str(path)], capture_output=True, text=True, check=False
    ).stdout.split()
    if resident:
        assert int(resident[0]) == 3 * MiB
    client.put_object(Bucket=mount.bucket, Key="f.bin", Body=b"b" * (2 * MiB))
    for _ in range(50):  # the mount's attributes may be cached for a moment
        if os.stat(path).st_size == 2 * MiB:
            break
        time.sleep(0.1)
    assert _read(path) == b"b" * (2 * MiB)


def test_a_file_opened_right_after_the_mount_is_read_in_large_kernel_requests(
    seaweed: SeaweedServer, s3_mounts: MountFactory
) -> None:
    """The mount's readahead (16 MiB) is raised as soon as the kernel's INIT is answered, so a
    file opened at once gets it: the kernel asks in 1 MiB requests, not the 128 KiB ones a
    file opened before the raise keeps (64 READs for 8 MiB; it was raised 1 s later)."""
    mount = s3_mounts()
    assert mount.bucket is not None
    body = os.urandom(8 * MiB)
    seaweed.client().put_object(Bucket=mount.bucket, Key="soon.bin", Body=body)
    reads_before = mount.status()["kernel_requests"].get("read", 0)
    assert _read(mount.path / "soon.bin") == body
    reads = mount.status()["kernel_requests"].get("read", 0) - reads_before
    assert 0 < reads <= 16, reads
