"""An `s3://` mount of Swift's s3api middleware, which answers 501 to `If-Match` on a PUT.

Every upload of a new file carries `If-None-Match: *` (s3api has it) and every upload of an
edit `If-Match` (s3api answers 501: before, editing an existing file through such a mount
failed at every upload). The S3 backend now checks that condition with a HEAD before an
unconditional PUT (docs/swift.md): files are created and replaced, an exclusive create of an
existing name fails, and an edit of an object another client changed meanwhile goes to a
conflict name instead of over theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import MountFactory, mount_factory_for
from tests.support.swift_fixtures import s3api_store_env
from tests.support.swift_server import SwiftServer


@pytest.fixture
def s3api_mounts(swift: SwiftServer, tmp_path: Path) -> Iterator[MountFactory]:
    with mount_factory_for(s3api_store_env(swift), tmp_path / "mounts") as made:
        yield made


def test_files_are_created_and_replaced_through_s3api(s3api_mounts: MountFactory) -> None:
    mnt = s3api_mounts()
    store = mnt.raw_store
    assert store is not None
    (mnt.path / "a.txt").write_bytes(b"one")
    (mnt.path / "d").mkdir()
    (mnt.path / "d" / "b.txt").write_bytes(b"two")
    mnt.flush()
    assert store.get("a.txt") == b"one"
    assert store.get("d/b.txt") == b"two"

    (mnt.path / "a.txt").write_bytes(b"three")
    mnt.flush()
    assert store.get("a.txt") == b"three"
    assert "answers 501 to a PUT with If-Match" in mnt.log.read_text(errors="replace")
    with pytest.raises(FileExistsError):
        os.open(mnt.path / "a.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    store.put("theirs.txt", b"made elsewhere")
    with pytest.raises(FileExistsError):  # not in this mount's listing: the server is asked
        os.open(mnt.path / "theirs.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert sorted(store.keys()) == ["a.txt", "d/", "d/b.txt", "theirs.txt"]


def test_an_edit_over_another_clients_change_goes_to_a_conflict_name(
    s3api_mounts: MountFactory,
) -> None:
    mnt = s3api_mounts()
    store = mnt.raw_store
    assert store is not None
    store.put("report.txt", b"original")
    with open(mnt.path / "report.txt", "r+b") as f:
        assert f.read() == b"original"
        store.put("report.txt", b"theirs")  # between our read and our upload
        f.seek(0)
        f.write(b"ours....")
    mnt.flush()
    assert store.get("report.txt") == b"theirs"
    names = store.keys()
    conflicts = [k for k in names if k.startswith("report.conflict-")]
    assert len(conflicts) == 1, names
    assert store.get(conflicts[0]) == b"ours...."
