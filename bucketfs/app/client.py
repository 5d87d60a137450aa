"""`bucketfs status` and `bucketfs flush`: asking a running daemon where the data is.

Owns the client side of the control channel, which is extended attributes on the mount itself
(no socket to find, secure by the mount's own permissions): `user.bucketfs.status` on the root
is a JSON report; setting `user.bucketfs.flush` on a file or directory returns only once
everything below it is on the server (the daemon answers the kernel only then).

Invariants: these commands never change data; they exit 0 only when the daemon said so.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from bucketfs.core.control import XATTR_FLUSH, XATTR_STATUS
from bucketfs.errors import ConfigError


def _mount_root(path: Path) -> Path:
    path = path.resolve()
    root = path
    while not os.path.ismount(root) and root != root.parent:
        root = root.parent
    return root


def _read_status(root: Path) -> dict[str, Any]:
    try:
        raw = os.getxattr(root, XATTR_STATUS)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise ConfigError(f"{root} (the mount holding that path) is not bucketfs") from None
        raise ConfigError(f"cannot ask {root}: {exc.strerror}") from None
    data: dict[str, Any] = json.loads(raw)
    return data


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_status(mountpoint: str, *, as_json: bool = False) -> int:
    root = _mount_root(Path(mountpoint))
    status = _read_status(root)
    if as_json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"mount:          {root}")
    print(f"dirty files:    {status['dirty_files']} ({_size(status['dirty_bytes'])})")
    for name in status.get("dirty", []):
        print(f"  {name}")
    print(f"uploading:      {status['uploading']}")
    if status.get("deletes_queued"):
        print(f"deletes queued: {status['deletes_queued']}")
    if status.get("markers_queued"):
        print(f"markers queued: {status['markers_queued']}")
    print(f"uploaded:       {status['uploads']} files, {_size(status['uploaded_bytes'])}")
    print(f"upload rate:    {_size(status['upload_rate'])}/s")
    for name, error in status.get("failed", {}).items():
        print(f"failed:         {name}: {error}")
    for error in status.get("last_errors", []):
        print(f"last error:     {error}")
    ratio = status.get("hit_ratio")
    print(
        f"cache:          {_size(status['cache_bytes'])} of {_size(status['cache_size'])}"
        f" in {status['cache_dir']}" + (f", hit ratio {ratio:.0%}" if ratio is not None else "")
    )
    return 0


def cmd_flush(mountpoint: str, path: str | None = None) -> int:
    root = _mount_root(Path(mountpoint))
    _read_status(root)  # a clear error when this is no bucketfs mount
    target = Path(path) if path else root
    if not target.is_absolute():
        target = root / target
    try:
        os.setxattr(target, XATTR_FLUSH, b"", follow_symlinks=False)
    except OSError as exc:
        failed = _read_status(root).get("failed", {})
        detail = "; ".join(f"{k}: {v}" for k, v in failed.items()) or exc.strerror
        print(f"bucketfs: flush of {target} failed: {detail}", file=sys.stderr)
        return 1
    return 0
