"""The upload quiet period (`writeback_delay`, default 1 s) through a real mount, on the local
store and SeaweedFS (bucketfs/cache/writeback.py).

A closed file is uploaded once it was left alone for the quiet period, so what cp -p, touch,
chmod, chown, setfattr, tar and rsync change right after close goes up with the content: one
write request, no server-side copy. Writes are counted two ways: on SeaweedFS every PUT and POST
through a counting relay (a server-side copy is a PUT too), and on both stores the versions of
the object in a versioned bucket (a copy in place is a version of its own). fsync, `bucketfs
flush`, unmount and SIGTERM skip the quiet period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fuse.test_saves import enable_versioning, versions_of
from tests.support.helpers import (
    Mount,
    MountFactory,
    StoreEnv,
    local_or_s3_env,
    require_tool,
)
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

OLD = 1_000_000_000  # 2001-09-09T01:46:40Z: a time no file here has by accident


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


@pytest.fixture
def relay(store_env: StoreEnv, request: pytest.FixtureRequest) -> Iterator[CountingProxy | None]:
    """A counting relay in front of SeaweedFS (None on the local store)."""
    if store_env.kind != "s3":
        yield None
        return
    seaweed: SeaweedServer = request.getfixturevalue("seaweed")
    url = urlsplit(seaweed.endpoint)
    proxy = CountingProxy(url.hostname or "127.0.0.1", url.port or 80).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def counted(mount_factory: MountFactory, relay: CountingProxy | None) -> Mount:
    """A mount with the default quiet period, its requests through `relay` on SeaweedFS."""
    options = [f"endpoint={relay.endpoint}"] if relay is not None else []
    mnt = mount_factory(options=options)
    enable_versioning(mnt)
    return mnt


def writes(relay: CountingProxy | None) -> int:
    """PUT and POST requests seen so far (uploads, copies, multipart; 0 on the local store)."""
    if relay is None:
        return 0
    requests = relay.snapshot().requests
    return requests.get("PUT", 0) + requests.get("POST", 0)


def sh(mnt: Mount, script: str) -> None:
    subprocess.run([require_tool("sh"), "-c", script], cwd=mnt.path, check=True, timeout=60)


def wait_uploaded(mnt: Mount, timeout: float = 20.0) -> None:
    """Until nothing is dirty, without asking for it (no `bucketfs flush`)."""
    deadline = time.monotonic() + timeout
    while mnt.status()["dirty_files"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mnt.status()["dirty_files"] == 0, mnt.status()


def source_tree(root: Path) -> Path:
    """A directory outside the mount with one file `f`: mode 0600, mtime OLD."""
    src = root / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.chmod(src / "f", 0o600)
    os.utime(src / "f", (OLD, OLD))
    return src


# name -> (setup in the mount or tmp dir, the command, what the object's metadata must say)
CASES = {
    "cp -p": ("cp -p src f", {"mode": str(0o100600), "mtime": str(OLD)}),
    "touch -d": (f"printf data > f; touch -d @{OLD} f", {"mtime": str(OLD)}),
    "chmod": ("printf data > f; chmod 600 f", {"mode": str(0o100600)}),
    "chown": ("printf data > f; chown 1234:4321 f", {"uid": "1234", "gid": "4321"}),
    "setfattr": ("printf data > f; setfattr -n user.colour -v blue f", {"colour": "blue"}),
    "tar x": ("tar -xf {tmp}/f.tar", {"mode": str(0o100600), "mtime": str(OLD)}),
    "rsync -a": ("rsync -a {tmp}/src/ .", {"mode": str(0o100600), "mtime": str(OLD)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attributes_set_right_after_close_go_up_in_the_one_put(
    counted: Mount, relay: CountingProxy | None, tmp_path: Path, case: str
) -> None:
    script, wanted = CASES[case]
    src = source_tree(tmp_path)
    with tarfile.open(tmp_path / "f.tar", "w") as tar:
        tar.add(src / "f", arcname="f")
    if case == "cp -p":
        sh(counted, f"cp -p {src}/f src")  # the source, on the server before counting
        counted.flush()
    for tool in ("cp", "touch", "chmod", "chown", "setfattr", "tar", "rsync"):
        require_tool(tool)
    before = writes(relay)
    sh(counted, script.format(tmp=tmp_path))
    wait_uploaded(counted)  # the quiet period passes by itself
    if relay is not None:
        assert writes(relay) - before == 1, relay.snapshot().requests
    assert versions_of(counted, "f") == [b"data"]
    assert counted.raw_store is not None
    size, meta = counted.raw_store.head("f")
    assert size == 4
    for key, value in wanted.items():
        assert meta.get(key) == value, (key, meta)
    assert counted.status()["uploads"] >= 1


def test_an_upload_waits_for_the_quiet_period(mnt: Mount) -> None:
    """Not before one second after the release, nor after the last change: a chmod in the
    quiet period starts it again; then it goes without being asked for."""
    raw = mnt.raw_store
    assert raw is not None
    path = mnt.path / "f"

    def first_seen(limit: float) -> float:
        deadline = time.monotonic() + limit
        while not raw.exists("f"):
            assert time.monotonic() < deadline, "not uploaded"
            time.sleep(0.02)
        return time.monotonic()

    closed = time.monotonic()
    path.write_bytes(b"one")
    assert first_seen(20) - closed >= 1.0
    wait_uploaded(mnt)
    assert raw.get("f") == b"one"

    path.write_bytes(b"two")
    time.sleep(0.4)
    changed = time.monotonic()
    os.chmod(path, 0o600)
    deadline = time.monotonic() + 20
    while raw.get("f") != b"two":
        assert time.monotonic() < deadline, "not uploaded"
        time.sleep(0.02)
    assert time.monotonic() - changed >= 1.0
    wait_uploaded(mnt)
    assert raw.head("f")[1]["mode"] == str(0o100600)
    assert mnt.status()["uploads"] == 2


def test_fsync_flush_unmount_and_sigterm_skip_the_quiet_period(mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=["writeback_delay=60"])
    raw = mnt.raw_store
    assert raw is not None
    started = time.monotonic()
    fd = os.open(mnt.path / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        assert raw.get("synced") == b"synced"  # fsync returned: on the server
    finally:
        os.close(fd)
    (mnt.path / "flushed").write_bytes(b"flushed")
    time.sleep(0.3)
    assert not raw.exists("flushed")  # waits for its quiet period
    mnt.flush()
    assert raw.get("flushed") == b"flushed"
    (mnt.path / "unmounted").write_bytes(b"unmounted")
    mnt.stop()
    assert raw.get("unmounted") == b"unmounted"
    mnt.start()
    (mnt.path / "terminated").write_bytes(b"terminated")
    assert mnt.proc is not None
    mnt.proc.send_signal(signal.SIGTERM)
    assert mnt.proc.wait(timeout=30) == 0
    mnt._force_down()  # the daemon is gone and unmounted: only the bookkeeping is left
    assert raw.get("terminated") == b"terminated"
    assert time.monotonic() - started < 40  # none of them waited for the 60 s quiet period


def keep_busy(path: Path, seconds: float) -> None:
    """Kernel requests with no pause for `seconds`: readdirs from two threads (a gap of
    50 ms in both at once, a descheduled test on a loaded machine, would end the wait)."""
    until = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < until:
            os.listdir(path)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_an_upload_waits_while_the_mount_is_busy_at_most_upload_defer(
    mount_factory: MountFactory,
) -> None:
    """After its quiet period, a file waits while kernel requests keep coming (a program
    writing a tree), then goes once they pause; `upload_defer` bounds the wait."""
    mnt = mount_factory(options=["writeback_delay=0.3", "upload_defer=1.5"])
    store = mnt.raw_store  # does not flush
    assert store is not None
    (mnt.path / "a").write_bytes(b"1")
    keep_busy(mnt.path, 1.2)
    assert store.keys("") == []  # due after 0.3 s, but the mount was busy
    deadline = time.monotonic() + 5.0
    while store.keys("") != ["a"]:  # the mount is idle now: it goes
        assert time.monotonic() < deadline
        time.sleep(0.05)

    (mnt.path / "b").write_bytes(b"2")
    started = time.monotonic()
    keep_busy(mnt.path, 2.5)  # due after 0.3 s, then 1.5 s at most: it went meanwhile
    assert store.keys("") == ["a", "b"]
    assert time.monotonic() - started < 10.0
