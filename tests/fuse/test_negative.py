"""A name found absent: the kernel keeps the daemon's answer as long as the daemon does.

The daemon keeps a negative entry for `negative_timeout` (core/namespace.py); it answers the
kernel's LOOKUP of such a name with inode 0 and the time left on it (fuse/ops.py), which the
kernel keeps as a negative dentry, so `stat` then `open(O_CREAT)` (cp, rsync, tar, a
program's search path) sends one LOOKUP, not one per look. What another client makes
meanwhile shows once that time is over, as before (README "Consistency").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import MountFactory, local_store_env, mount_factory_for


@pytest.fixture
def local_mounts(tmp_path: Path) -> Iterator[MountFactory]:
    with mount_factory_for(local_store_env(tmp_path / "store"), tmp_path / "mounts") as factory:
        yield factory


def test_a_name_found_absent_is_not_looked_up_again_while_its_absence_holds(
    local_mounts: MountFactory,
) -> None:
    mnt = local_mounts(options=["negative_timeout=60"])
    target = mnt.path / "new.txt"
    assert not target.exists()
    before = mnt.status()["kernel_requests"]
    for _ in range(5):
        assert not target.exists()
    target.write_bytes(b"made here")  # the kernel replaces its negative entry
    after = mnt.status()["kernel_requests"]
    assert after.get("lookup", 0) - before.get("lookup", 0) == 0
    assert after.get("create", 0) - before.get("create", 0) == 1
    assert target.read_bytes() == b"made here"
    mnt.flush()
    assert mnt.raw_store is not None
    assert mnt.raw_store.get("new.txt") == b"made here"


def test_what_another_client_makes_shows_once_the_absence_expires(
    local_mounts: MountFactory,
) -> None:
    mnt = local_mounts(options=["negative_timeout=1"])
    assert mnt.raw_store is not None
    target = mnt.path / "theirs.txt"
    assert not target.exists()
    started = time.monotonic()
    mnt.raw_store.put("theirs.txt", b"from elsewhere")
    seen = None
    while time.monotonic() - started < 5:
        if target.exists():
            seen = time.monotonic() - started
            break
        time.sleep(0.05)
    assert seen is not None, "another client's file never showed"
    # the kernel keeps the daemon's answer for the time left on it, never a whole timeout
    # more from each look (that would show it at ~2 s while looked at every 50 ms)
    assert 0.9 <= seen < 1.7, f"shown after {seen:.2f} s, negative_timeout 1 s"
    assert target.read_bytes() == b"from elsewhere"
