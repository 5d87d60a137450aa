"""Asking the kernel to end a FUSE mount: fusermount3, and umount(8) for a forced abort.

Owns every unmount bucketfs makes. Three callers, three behaviours, one tool:
- `unmount` (`bucketfs umount`, a stale mount cleared before mounting): fails loudly, with a
  `ConfigError` when fusermount3 is missing and a `BucketfsError` naming the last line it wrote
  on stderr (e.g. "Device or resource busy") when it refused;
- `unmount_or_detach` (the daemon on SIGTERM/SIGINT): a busy mount is detached lazily instead,
  with a warning in the log; it never raises for fusermount3's refusal;
- `detach` (a daemon that never became ready left a mount behind): a lazy detach that ignores
  the outcome.

This module does not import pyfuse3, so the command line uses it without loading the kernel
side. Invariants: every call blocks until the tool has exited (the daemon makes its call in a
worker thread, so its event loop keeps serving requests meanwhile); fusermount3 gets `-u` for an
unmount and `-u -z` for a lazy detach, nothing else.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from bucketfs.errors import BucketfsError, ConfigError

log = logging.getLogger(__name__)

FUSERMOUNT = "fusermount3"


def require() -> None:
    """ConfigError (with what to install) when fusermount3 is not on PATH."""
    if not shutil.which(FUSERMOUNT):
        raise ConfigError(f"{FUSERMOUNT} not found on PATH: install fuse3 (apt-get install fuse3)")


def _run(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FUSERMOUNT, *flags, str(path)], capture_output=True, text=True, check=False
    )


def unmount(path: Path, *, lazy: bool = False) -> None:
    """`fusermount3 -u [-z] PATH`; raises when the tool is missing or refuses."""
    require()
    done = _run(path, "-u", *(("-z",) if lazy else ()))
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise BucketfsError(f"cannot unmount {path}: {detail[0]}")


def unmount_or_detach(path: Path) -> None:
    """End the session (the daemon then drains and exits); a busy mount is detached lazily."""
    done = _run(path, "-u")
    if done.returncode != 0:
        log.warning("mount busy, detaching it lazily: %s", done.stderr.strip())
        _run(path, "-u", "-z")


def detach(path: Path) -> None:
    """`fusermount3 -u -z PATH`, whatever comes of it."""
    _run(path, "-u", "-z")


def abort(path: str) -> int:
    """umount(8) itself, without its helpers (-i), forced: aborts the FUSE connection. Returns
    its exit status (its messages go to our stderr)."""
    return subprocess.run(["umount", "-i", "-f", path], check=False).returncode
