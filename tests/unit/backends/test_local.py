"""What only the local store promises: persistence, several processes on one root, crash leftovers
swept, any key storable, big folded listings, blobs shared by copies."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from bucketfs.backends.local.backend import LocalBackend
from bucketfs.errors import BucketNotFound, InvalidRequest, NotFound


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


def blobs(root: Path, bucket: str = "bkt") -> list[str]:
    return sorted(os.listdir(root / bucket / "blobs"))


async def fresh(root: Path, *, fsync: bool = False) -> LocalBackend:
    backend = LocalBackend(root, fsync=fsync)
    if not (root / "bkt").exists():
        await backend.create_bucket("bkt")
    return backend


async def list_everything(
    b: LocalBackend, prefix: str = "", delimiter: str | None = "/", max_keys: int = 1000
) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    prefixes: list[str] = []
    token: str | None = None
    while True:
        page = await b.list_page("bkt", prefix, delimiter=delimiter, token=token, max_keys=max_keys)
        assert len(page.objects) + len(page.prefixes) <= max_keys
        keys += [o.key for o in page.objects]
        prefixes += page.prefixes
        if page.next_token is None:
            return keys, prefixes
        token = page.next_token


def test_layout_and_persistence(tmp_path: Path) -> None:
    async def main() -> None:
        first = await fresh(tmp_path, fsync=True)
        assert first.description == f"local {tmp_path}"
        await first.put("bkt", "dir/file", b"hello")
        await first.put("bkt", "empty", b"")
        await first.set_versioning("bkt", True)
        await first.aclose()
        assert sorted(os.listdir(tmp_path / "bkt")) >= ["blobs", "index.sqlite", "lock", "uploads"]
        assert len(blobs(tmp_path)) == 1  # the empty object needs no blob

        second = LocalBackend(tmp_path)
        assert await second.get("bkt", "dir/file") == b"hello"
        assert await second.get("bkt", "empty") == b""
        assert await second.get_versioning("bkt") == "Enabled"
        assert [b.name for b in await second.list_buckets()] == ["bkt"]
        await second.aclose()

    run(main)


def test_two_instances_share_one_root(tmp_path: Path) -> None:
    async def main() -> None:
        a = await fresh(tmp_path)
        b = LocalBackend(tmp_path, fsync=False)

        async def writer(backend: LocalBackend, name: str) -> None:
            for i in range(40):
                await backend.put("bkt", f"{name}/{i:02d}", name.encode() * 100)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, a, "a")
            nursery.start_soon(writer, b, "b")
        keys, _ = await list_everything(b, delimiter=None)
        assert len(keys) == 80
        assert await a.get("bkt", "b/39") == b"b" * 100
        await b.put("bkt", "a/00", b"replaced by b")
        assert await a.get("bkt", "a/00") == b"replaced by b"

        # a bucket deleted by one instance is gone for the other, and can come back
        await a.delete_many("bkt", keys)
        await b.delete_bucket("bkt")
        with pytest.raises(BucketNotFound):
            await a.head("bkt", "a/01")
        await b.create_bucket("bkt")
        await b.put("bkt", "again", b"1")
        assert await a.get("bkt", "again") == b"1"
        await a.aclose()
        await b.aclose()

    run(main)


def test_another_process_writes_and_reads(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, trio
        from pathlib import Path
        from bucketfs.backends.local.backend import LocalBackend

        async def main():
            backend = LocalBackend(Path(sys.argv[1]))
            for i in range(30):
                await backend.put("bkt", f"child/{i}", b"from the child")
            print(await backend.get("bkt", "parent/0"))
            await backend.aclose()

        trio.run(main)
        """
    )

    async def main() -> None:
        parent = await fresh(tmp_path, fsync=True)
        await parent.put("bkt", "parent/0", b"from the parent")
        child = await trio.run_process(
            [sys.executable, "-c", script, str(tmp_path)], capture_stdout=True
        )
        assert child.stdout.strip() == b"b'from the parent'"
        keys, _ = await list_everything(parent, "child/")
        assert len(keys) == 30
        assert await parent.get("bkt", "child/29") == b"from the child"
        await parent.aclose()

    run(main)


def test_crash_leftovers_are_swept_and_old_object_intact(tmp_path: Path) -> None:
    async def main() -> None:
        first = await fresh(tmp_path)
        await first.put("bkt", "k", b"old contents")
        await first.aclose()
        [good] = blobs(tmp_path)
        # what a crash between writing the new blob and committing leaves behind
        (tmp_path / "bkt" / "blobs" / "f00dfeed").write_bytes(b"new cont")
        (tmp_path / "bkt" / "uploads" / "deadbeef").mkdir()
        (tmp_path / "bkt" / "uploads" / "deadbeef" / "part").write_bytes(b"x")

        holder = LocalBackend(tmp_path, fsync=False)
        await holder.head_bucket("bkt")  # opens the bucket: the leftovers are swept
        assert blobs(tmp_path) == [good]
        assert os.listdir(tmp_path / "bkt" / "uploads") == []
        assert await holder.get("bkt", "k") == b"old contents"

        # while one process has the bucket open, another must not sweep its writes in flight
        (tmp_path / "bkt" / "blobs" / "inflight").write_bytes(b"x")
        other = LocalBackend(tmp_path, fsync=False)
        await other.head_bucket("bkt")
        assert "inflight" in blobs(tmp_path)
        await other.aclose()
        await holder.aclose()

    run(main)


def test_any_key_is_storable(tmp_path: Path) -> None:
    keys = [
        "a",
        "a/b",
        "a//b",
        "a/b/",
        "..",
        ".",
        "../escape",
        "/leading",
        "x" * 1024,
        "ü/" * 300 + "tail",
        "new\nline",
        "back\\slash",
        "tab\tand\x01control",
        "\U0010ffff/max",
        "n" * 300 + "/" + "m" * 300,
    ]

    async def main() -> None:
        b = await fresh(tmp_path)
        for key in keys:
            await b.put("bkt", key, key.encode()[:50])
        stored, _ = await list_everything(b, delimiter=None, max_keys=3)
        assert stored == sorted(keys, key=str.encode)
        for key in stored:
            assert await b.get("bkt", key) == key.encode()[:50]
        assert await b.get("bkt", "a") == b"a"
        assert await b.get("bkt", "a/b") == b"a/b"
        # the key is data, not a path: nothing outside the bucket was touched
        assert sorted(os.listdir(tmp_path)) == ["bkt"]
        _, prefixes = await list_everything(b)
        assert prefixes == ["../", "/", "a/", "n" * 300 + "/", "ü/", "\U0010ffff/"]
        with pytest.raises(InvalidRequest):
            await b.put("bkt", "x" * 1025, b"")
        await b.aclose()

    run(main)


def test_ten_thousand_keys_with_delimiter(tmp_path: Path) -> None:
    dirs = [f"dir{d:03d}/" for d in range(100)]
    files = [f"file{i:05d}" for i in range(100)]

    async def main() -> None:
        b = await fresh(tmp_path)
        keys = [d + f"f{i:03d}" for d in dirs for i in range(99)] + files

        assert len(keys) == 10_000
        for key in keys:
            await b.put("bkt", key, b"")

        got_keys, got_prefixes = await list_everything(b, max_keys=7)
        assert got_keys == files
        assert got_prefixes == dirs
        page = await b.list_page("bkt")
        assert len(page.objects) == 100
        assert len(page.prefixes) == 100
        assert page.next_token is None
        inside, _ = await list_everything(b, "dir042/", max_keys=10)
        assert inside == [f"dir042/f{i:03d}" for i in range(99)]
        everything, _ = await list_everything(b, delimiter=None)
        assert everything == sorted(keys)
        await b.aclose()

    run(main)


def test_versions_persist(tmp_path: Path) -> None:
    async def main() -> None:
        first = await fresh(tmp_path)
        await first.set_versioning("bkt", True)
        v1 = await first.put("bkt", "k", b"one")
        v2 = await first.put("bkt", "k", b"two")
        await first.delete("bkt", "k")
        await first.aclose()

        second = LocalBackend(tmp_path)
        page = await second.list_versions_page("bkt")
        assert [(v.version_id, v.is_latest, v.is_delete_marker) for v in page.versions][1:] == [
            (v2.version_id, False, False),
            (v1.version_id, False, False),
        ]
        assert page.versions[0].is_delete_marker
        assert page.versions[0].is_latest
        with pytest.raises(NotFound):
            await second.head("bkt", "k")
        assert await second.get("bkt", "k", version_id=v1.version_id) == b"one"
        assert (await second.head("bkt", "k", version_id=v2.version_id)).size == 3
        assert len(blobs(tmp_path)) == 2
        await second.aclose()

    run(main)


def test_copy_shares_the_blob_and_frees_it_last(tmp_path: Path) -> None:
    async def main() -> None:
        b = await fresh(tmp_path)
        await b.put("bkt", "src", b"shared body")
        await b.copy("bkt", "src", "dst")
        assert len(blobs(tmp_path)) == 1
        await b.delete("bkt", "src")
        assert await b.get("bkt", "dst") == b"shared body"
        await b.put("bkt", "dst", b"replaced")  # the old blob loses its last name
        assert len(blobs(tmp_path)) == 1
        assert await b.get("bkt", "dst") == b"replaced"
        await b.delete("bkt", "dst")
        assert blobs(tmp_path) == []
        await b.aclose()

    run(main)


def test_stream_survives_overwrite(tmp_path: Path) -> None:
    async def main() -> None:
        b = await fresh(tmp_path)
        data = os.urandom(1_000_000)
        await b.put("bkt", "big", data)
        async with b.get_stream("bkt", "big") as chunks:
            got = [await chunks.__anext__()]
            await b.put("bkt", "big", b"small")  # unlinks the old blob; our fd keeps it
            got += [c async for c in chunks]
        assert b"".join(got) == data
        assert await b.get("bkt", "big") == b"small"
        await b.aclose()

    run(main)
