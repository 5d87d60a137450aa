"""Clean cached blocks survive an unmount and a mount with the same cache directory, through
the kernel on SeaweedFS with requests counted (scripts/benchlib/proxy.py): a file read before
the unmount is read again after it, with the kernel's page cache dropped, without a GET; one
changed on the server meanwhile is read anew (cache/store.py `_load`, docs/cache.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
