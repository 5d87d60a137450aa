"""A cold walk of a tree (`ls -lR`, `du`, `tar c`): once the kernel asks about listed files,
readdir replies carry each small file's attributes from its HEAD (core/readdir.py `ahead`),
so the kernel looks no file up, and every object is asked for once; through the kernel on
SeaweedFS with requests counted (scripts/benchlib/proxy.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.helpers import MountFactory
from tests.support.servers import SeaweedServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from benchlib.proxy import CountingProxy

DIRS = "abc"
FILES = 40


def _heads(relay: CountingProxy) -> int:
    return relay.snapshot().requests.get("HEAD", 0)


def _lookups(mount: Any) -> int:
    return int(mount.status()["kernel_requests"].get("lookup", 0))


def _mode(i: int) -> int:
    return 0o600 if i % 2 else 0o640


def _put(mount: Any, seaweed: SeaweedServer, name: str, size: int) -> None:
    """Another client's DIRS directories of FILES files each, `{name}NN` of `size + NN`
    bytes (modes alternate)."""
    assert mount.bucket is not None
    client = seaweed.client()
    for d in DIRS:
        for i in range(FILES):
            client.put_object(
                Bucket=mount.bucket,
                Key=f"{d}/{name}{i:02d}",
                Body=b"x" * (size + i),
                Metadata={"mode": str(stat.S_IFREG | _mode(i))},
            )


def _tree(mount: Any, seaweed: SeaweedServer) -> None:
    """DIRS directories of FILES small files each (`_put`), a symlink in the last; then a
    fresh mount with an empty cache (nothing kept from this one)."""
    _put(mount, seaweed, "f", 1)
    os.symlink("f00", mount.path / DIRS[-1] / "link")
    mount.flush()
    mount.stop()
    mount.start()


def test_ls_lR_cold_sends_no_lookup_per_file_and_one_head_per_object(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    _tree(mount, seaweed)
    # the first directory: readdir shows its files without a node, the kernel looks each up
    first = subprocess.run(["ls", "-l", str(mount.path / DIRS[0])], capture_output=True)
    assert first.returncode == 0
    assert first.stdout.count(b"\n") == FILES + 1
    for d in DIRS[1:]:
        os.stat(mount.path / d)  # the directories' own lookups are not what is counted
    assert sorted(os.listdir(mount.path)) == list(DIRS)  # as `ls -R` reads the top first
    lookups, heads = _lookups(mount), _heads(proxy)
    lists = proxy.snapshot().kinds.get("LIST", 0)
    seen = {
        d: {name: os.lstat(mount.path / d / name) for name in sorted(os.listdir(mount.path / d))}
        for d in DIRS[1:]
    }
    assert _lookups(mount) - lookups <= 2, "a LOOKUP per file readdir could have answered"
    assert _heads(proxy) - heads == FILES * 2 + 1, "one HEAD per object, none twice"
    # the last directory was listed while the one before was read (core/earlylist.py), once
    assert proxy.snapshot().kinds.get("LIST", 0) - lists == len(DIRS) - 1
    assert mount.status()["early_listings_used"] == 1
    # nodes readdir made from this walk's HEADs: taken from the prefetch's answers, or from
    # the attribute store when the server answered 2 s or more after the upload and the
    # answer was kept at once (cache/attrstore.py; readdir asks that first)
    status = mount.status()
    assert status["found_nodes"] + status["kept_nodes"] >= FILES * 2
    for d, names in seen.items():
        for i in range(FILES):
            st = names[f"f{i:02d}"]
            assert stat.S_ISREG(st.st_mode), (d, i)
            assert stat.S_IMODE(st.st_mode) == _mode(i), (d, i)
            assert st.st_size == i + 1
    assert stat.S_ISLNK(seen[DIRS[-1]]["link"].st_mode)
    assert os.readlink(mount.path / DIRS[-1] / "link") == "f00"


def test_find_alone_sends_no_head(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """`find` reads names only: nothing it does counts as the kernel asking about files, so
    readdir waits for no HEAD and the prefetch sends none."""
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    _tree(mount, seaweed)
    heads = _heads(proxy)
    found = subprocess.run(
        ["find", str(mount.path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(found) == 1 + len(DIRS) + len(DIRS) * FILES + 1
    assert _heads(proxy) - heads <= len(DIRS), "a HEAD per file for find"  # markers at most
    assert mount.status()["found_nodes"] == 0


def _getattrs(mount: Any) -> int:
    return int(mount.status()["kernel_requests"].get("getattr", 0))


def test_ls_l_of_large_files_asks_no_getattr_per_file_once_the_walk_asks_attributes(
    seaweed: SeaweedServer, proxy: CountingProxy, s3_mounts: MountFactory
) -> None:
    """Files too large to be symlinks are shown as nodes of the listing's attributes; the
    kernel's getattr of each asks their metadata. Once getattr asked (`ls -l`, `du`, `tar c`
    do; `rm -rf` does not: test_requests.py), the next directories' replies carry what
    their HEADs found: no GETATTR per file, one HEAD per object."""
    mount = s3_mounts(options=[f"endpoint={proxy.endpoint}"])
    _put(mount, seaweed, "big", 5000)
    first = subprocess.run(["ls", "-l", str(mount.path / DIRS[0])], capture_output=True)
    assert first.returncode == 0
    for d in DIRS[1:]:
        os.stat(mount.path / d)
    getattrs, heads = _getattrs(mount), _heads(proxy)
    for d in DIRS[1:]:
        for name in sorted(os.listdir(mount.path / d)):
            st = os.lstat(mount.path / d / name)
            i = int(name[3:])
            assert stat.S_IMODE(st.st_mode) == _mode(i), (d, name)
            assert st.st_size == 5000 + i
    assert _getattrs(mount) - getattrs <= 2, "a GETATTR per file the reply could have answered"
    assert _heads(proxy) - heads == FILES * 2, "one HEAD per object, none twice"
