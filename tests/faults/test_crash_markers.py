"""SIGKILL of the daemon right after `mkdir` returned, during a burst of marker uploads, and
after the server stored a marker whose answer never reached the daemon; then a new daemon on the
same cache directory (bucketfs/cache/markers.py, docs/cache.md "Directory markers").

What must hold after the new daemon flushed, checked with an independent client: every
directory whose mkdir returned is on the server (its marker, with the mode it was made with
where the store keeps marker metadata); a directory removed before the kill is not; a name
deleted and then made a directory ends a directory (the replayed delete goes first); nothing
else appears.
"""

from __future__ import annotations

import os
import stat

from tests.support.crash import (
    CrashMount,
    CrashMounts,
    HoldingProxy,
    blob,
    proxied_env,
    wait_for,
    write_file,
)
from tests.support.helpers import store_keeps_marker_metadata
from tests.support.servers import SeaweedServer


def markers_on(mount: CrashMount, names: list[str]) -> list[str]:
    """Which of the directories `names` have their marker on the server."""
    on_server = set(mount.server.keys())
    return [name for name in names if name + "/" in on_server]


def test_kill_right_after_mkdir_loses_no_directory(crash_mounts: CrashMounts) -> None:
    mount = crash_mounts(["writeback_delay=3600"])  # nothing goes up unless waited for
    server = mount.server
    root = mount.path
    write_file(root / "x", blob(1, 10))
    os.mkdir(root / "again")
    mount.flush_all()
    assert sorted(server.keys()) == ["again/", "x"]
    os.makedirs(root / "a" / "b" / "c")
    os.mkdir(root / "m", 0o750)
    write_file(root / "a" / "f", blob(2, 1000))
    os.mkdir(root / "gone")
    os.rmdir(root / "gone")
    os.unlink(root / "x")
    os.mkdir(root / "x")  # the file's delete is queued (or sent): the marker waits for it
    os.rmdir(root / "again")
    os.mkdir(root / "again", 0o700)
    assert mount.status()["markers_queued"] == 6
    mount.kill()
    assert markers_on(mount, ["a", "a/b", "a/b/c", "m"]) == []
    mount.start()  # a new daemon on the killed one's cache directory
    assert sorted(os.listdir(root)) == ["a", "again", "m", "x"]
    assert sorted(os.listdir(root / "a")) == ["b", "f"]
    mount.flush_all()
    expected = ["a/", "a/b/", "a/b/c/", "a/f", "again/", "m/", "x/"]
    assert sorted(server.keys()) == expected
    assert server.get("a/f") == blob(2, 1000)
    assert mount.status()["markers_queued"] == 0
    if store_keeps_marker_metadata(server):
        assert int(server.head("m/")[1]["mode"]) == stat.S_IFDIR | 0o750
        assert int(server.head("again/")[1]["mode"]) == stat.S_IFDIR | 0o700


def test_kill_during_a_burst_of_marker_uploads(crash_mounts: CrashMounts) -> None:
    """Markers go at once (no delay) and in parallel: the kill lands while some are in
    flight or queued. Every directory made comes through; the test insists that in some
    round the server lacked markers at the kill, so that it tested something."""
    mount = crash_mounts()
    caught_pending = 0
    made: list[str] = []
    for round_ in range(3):
        top = f"r{round_}"
        os.mkdir(mount.path / top)
        names = [top] + [f"{top}/d{i:03d}" for i in range(150)]
        for name in names[1:]:
            os.mkdir(mount.path / name)
        made += names
        mount.kill()
        missing = len(names) - len(markers_on(mount, names))
        print(f"round {round_}: {missing} of {len(names)} markers not on the server at the kill")
        caught_pending += missing > 0
        mount.start()
        mount.flush_all()
        assert markers_on(mount, made) == made
        assert sorted(mount.server.keys()) == sorted(name + "/" for name in made)
    assert caught_pending, "every marker was on the server before the kill: kill sooner"


def test_kill_after_the_server_stored_a_marker_unacknowledged(
    seaweed: SeaweedServer, proxy: HoldingProxy, s3_crash_mounts: CrashMounts
) -> None:
    """The marker's PUT reaches the server, its answer never reaches the daemon, which is
    killed: the next daemon sends it again (harmless) and an rmdir then removes it for good
    (the recovered marker may be on the server: its delete is queued)."""
    mount = s3_crash_mounts(store_env=proxied_env(seaweed, proxy))
    server = mount.server
    proxy.arm(lambda line: line.startswith(b"PUT ") and b"/held/ HTTP" in line)
    os.mkdir(mount.path / "held")
    wait_for("the server to store the marker", lambda: server.exists("held/"), 30, 0.02)
    assert proxy.held_bytes > 0, "the answer was not withheld"
    assert mount.status()["markers_queued"] == 1
    mount.kill()
    proxy.release()
    mount.start()
    assert os.listdir(mount.path) == ["held"]
    os.rmdir(mount.path / "held")
    mount.flush_all()
    assert server.keys() == []
    os.mkdir(mount.path / "held")
    mount.flush_all()
    assert server.keys() == ["held/"]
