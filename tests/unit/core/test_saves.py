"""One upload per save, on the memory backend: the upload starts at the release of the last
writable handle (tests/fuse/test_saves.py does it through the kernel)."""

from __future__ import annotations

import os

from bucketfs.core.nodes import ROOT_INO
from tests.support.harness import BUCKET, Harness, RunFs

WO = os.O_WRONLY


async def versions(h: Harness, key: str) -> list[bytes]:
    """Every version of `key`, oldest first."""
    await h.settle()
    page = await h.store.list_versions_page(BUCKET, key, delimiter=None)
    found = [v for v in page.versions if v.key == key and not v.is_delete_marker]
    found.sort(key=lambda v: (v.last_modified, v.version_id or ""))
    return [await h.store.get(BUCKET, key, version_id=v.version_id) for v in found]


def test_a_file_open_twice_for_writing_is_uploaded_at_the_last_release(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        fh1, node = await h.fs.create(ROOT_INO, "f", 0o644, WO | os.O_CREAT, 0, 0)
        fh2, _keep = await h.fs.open(node.ino, WO)
        await h.fs.write(fh1, 0, b"one")
        await h.fs.flush(fh1)
        await h.fs.release(fh1)
        assert await h.keys() == []  # another writer still has it open
        await h.fs.write(fh2, 3, b" two")
        await h.fs.flush(fh2)
        await h.fs.release(fh2)
        assert await h.body("f") == b"one two"
        assert h.store.calls["put"] == 1

    run_fs(body)


def test_each_save_of_a_file_saved_again_at_once_is_a_version(run_fs: RunFs) -> None:
    async def body(h: Harness) -> None:
        await h.store.set_versioning(BUCKET, True)
        node = await h.write_file("f", b"1")
        for data in (b"2", b"3"):  # no pause: the previous upload may not have started
            fh, _keep = await h.fs.open(node.ino, WO | os.O_TRUNC)
            await h.fs.write(fh, 0, data)
            await h.fs.flush(fh)
            await h.fs.release(fh)
        assert await versions(h, "f") == [b"1", b"2", b"3"]

    run_fs(body)
