"""What a second client's changes look like through a mount, and after how long: the table in
README "Changes made by other clients", checked with two mounts of one bucket (A changes, B
looks) on the local store and SeaweedFS.

B asks for a file's attributes again with a HEAD, or with a listing of its directory for all
its files (core/revalidate.py); the bounds are the same either way, and both ways are tested.

Each bound is measured from the moment A's change is on the server (A's `bucketfs flush`
returned, or its delete reached the store) to the first time B shows it, polling; `SLACK`
covers a loaded machine. "At once" is checked with one look, no polling. "Not before" is
checked only where it is deterministic: a mount whose timeouts (60 s) have not run out keeps
showing what it saw.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.helpers import Mount, MountFactory, StoreEnv, local_or_s3_env

#: scheduling on a loaded CI machine, on top of each stated bound
SLACK = 1.5
SHORT = 0.5
#: B's timeouts for the bounds test: every one SHORT
SHORT_OPTIONS = [
    f"{name}={SHORT}"
    for name in ("attr_timeout", "entry_timeout", "dir_timeout", "negative_timeout")
]
LONG_OPTIONS = [
    f"{name}=60" for name in ("attr_timeout", "entry_timeout", "dir_timeout", "negative_timeout")
]


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


def within(bound: float, seen: Callable[[], bool]) -> float:
    """Poll `seen` until it holds; fail after `bound` + SLACK. Returns the time it took."""
    start = time.monotonic()
    while not seen():
        elapsed = time.monotonic() - start
        assert elapsed <= bound + SLACK, f"not seen {elapsed:.2f} s later (bound {bound} s)"
        time.sleep(0.02)
    return time.monotonic() - start


def missing(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def deleted(a: Mount, key: str) -> None:
    """Until A's unlink of `key` reached the server (deletes leave in batches)."""
    store = a.raw_store
    assert store is not None
    a.flush()
    deadline = time.monotonic() + 10
    while store.exists(key):
        assert time.monotonic() < deadline, f"{key} still on the server"
        time.sleep(0.01)


def two_mounts(mount_factory: MountFactory, options: list[str]) -> tuple[Mount, Mount]:
    a = mount_factory()
    b = mount_factory(a.bucket, options=options)
    return a, b


def test_a_second_clients_changes_within_the_stated_bounds(mount_factory: MountFactory) -> None:
    a, b = two_mounts(mount_factory, SHORT_OPTIONS)
    for d in ("listed", "named"):
        (a.path / d).mkdir()
    for name in ("changed", "stated", "chmodded", "opened", "gone"):
        (a.path / "named" / name).write_bytes(b"v1")
    (a.path / "listed" / "old").write_bytes(b"v1")
    a.flush()
    assert os.listdir(b.path / "listed") == ["old"]
    assert missing(b.path / "named" / "new")  # B found it absent...
    for name in ("changed", "stated", "chmodded", "opened", "gone"):
        assert os.stat(b.path / "named" / name).st_size == 2  # ...and these present
    assert (b.path / "named" / "changed").read_bytes() == b"v1"

    # create: `ls` shows it at its next listing; a name B found absent, within
    # max(negative_timeout, dir_timeout)
    (a.path / "listed" / "new").write_bytes(b"n")
    (a.path / "named" / "new").write_bytes(b"n")
    a.flush()
    assert sorted(os.listdir(b.path / "listed")) == ["new", "old"]
    within(SHORT, lambda: not missing(b.path / "named" / "new"))

    # content change: the next open reads it (close-to-open); stat within 2 x attr_timeout
    (a.path / "named" / "changed").write_bytes(b"v2, longer")
    (a.path / "named" / "stated").write_bytes(b"v2, longer")
    a.flush()
    assert (b.path / "named" / "changed").read_bytes() == b"v2, longer"
    within(2 * SHORT, lambda: os.stat(b.path / "named" / "stated").st_size == 10)

    # metadata change (a copy onto itself): stat within 2 x attr_timeout
    os.chmod(a.path / "named" / "chmodded", 0o600)
    a.flush()
    within(2 * SHORT, lambda: mode(b.path / "named" / "chmodded") == 0o600)

    # delete: `ls` at its next listing, open at once, stat within entry + 2 x attr_timeout
    os.unlink(a.path / "listed" / "old")
    os.unlink(a.path / "named" / "opened")
    os.unlink(a.path / "named" / "gone")
    deleted(a, "named/gone")
    deleted(a, "named/opened")
    deleted(a, "listed/old")
    assert os.listdir(b.path / "listed") == ["new"]
    with pytest.raises(FileNotFoundError):
        (b.path / "named" / "opened").read_bytes()
    within(3 * SHORT, lambda: missing(b.path / "named" / "gone"))


def test_with_the_defaults_a_chmod_shows_within_two_seconds(mount_factory: MountFactory) -> None:
    """The bound a user meets most, with no timeout options: another client's chmod (or
    touch, or content change) shows in `stat` within 2 x attr_timeout = 2 s, and a changed
    file's next open reads the new content at once."""
    a, b = two_mounts(mount_factory, [])
    f_a, f_b = a.path / "f", b.path / "f"
    f_a.write_bytes(b"v1")
    a.flush()
    assert mode(f_b) == 0o644
    assert f_b.read_bytes() == b"v1"
    os.chmod(f_a, 0o600)
    f_a.write_bytes(b"v2, longer")
    a.flush()
    assert f_b.read_bytes() == b"v2, longer"
    within(2.0, lambda: mode(f_b) == 0o600)


def test_with_the_defaults_changes_show_within_two_seconds_through_a_listing(
    mount_factory: MountFactory,
) -> None:
    """The same bound when B asks again with a listing of the directory instead of a HEAD
    per file (core/revalidate.py: its attributes came from a HEAD answered 2 s or more after
    LastModified): the listing shows A's chmod (a copy onto itself, a new LastModified) and
    A's new content, and B asks for those with a HEAD."""
    a, b = two_mounts(mount_factory, [])
    (a.path / "m").write_bytes(b"v1")
    (a.path / "c").write_bytes(b"v1")
    a.flush()
    time.sleep(2.2)  # B's HEADs below can vouch for a listing
    for _ in range(2):  # a HEAD, then (past attr_timeout) a listing
        assert (mode(b.path / "m"), os.stat(b.path / "c").st_size) == (0o644, 2)
        time.sleep(1.2)
    os.chmod(a.path / "m", 0o600)
    (a.path / "c").write_bytes(b"v2, longer")
    a.flush()
    within(2.0, lambda: (mode(b.path / "m"), os.stat(b.path / "c").st_size) == (0o600, 10))


def test_until_its_timeouts_run_out_a_mount_shows_what_it_saw(
    mount_factory: MountFactory,
) -> None:
    """The "not before" of the table, where it is deterministic: with timeouts of 60 s, B
    keeps the attributes, the absence and the presence it saw (no request is sent); only
    `open` asks the server at once (close-to-open), whatever the timeouts."""
    a, b = two_mounts(mount_factory, LONG_OPTIONS)
    f_a, f_b = a.path / "f", b.path / "f"
    f_a.write_bytes(b"v1")
    (a.path / "g").write_bytes(b"g")
    a.flush()
    assert (mode(f_b), os.stat(f_b).st_size) == (0o644, 2)
    assert missing(b.path / "new")
    assert not missing(b.path / "g")
    os.chmod(f_a, 0o600)
    (a.path / "new").write_bytes(b"n")
    os.unlink(a.path / "g")
    deleted(a, "g")
    assert (mode(f_b), os.stat(f_b).st_size) == (0o644, 2)
    assert missing(b.path / "new")
    assert not missing(b.path / "g")
    f_a.write_bytes(b"v2, longer")
    a.flush()
    assert f_b.read_bytes() == b"v2, longer"  # the open asked
    assert missing(b.path / "new")
