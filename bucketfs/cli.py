"""The `bucketfs` and `mount.bucketfs` commands.

Owns the command line: argument parsing, the checks made before anything starts, and the
messages users read. Invariants:
- every failure prints exactly one line `bucketfs: <message>` on stderr and exits 1, with no
  traceback unless `-o debug` was given (warnings are extra lines `bucketfs: warning: ...`);
- `mount` checks the mountpoint and the FUSE tooling before it starts a daemon, and clears a
  stale mount (its daemon died: ENOTCONN) instead of failing on it;
- `umount` returns only after the daemon has exited, i.e. after it uploaded what was pending,
  or after a timeout that it reports.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from bucketfs import __version__
from bucketfs.daemon import LOG_FORMAT, run_in_background, wait_gone
from bucketfs.errors import BucketfsError, ConfigError
from bucketfs.options import build_config, option_names, parse_flag, parse_options

PROG = "bucketfs"
DEV_FUSE = "/dev/fuse"
FUSERMOUNT = "fusermount3"
READY_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 600.0
UMOUNT_REPORT_INTERVAL = 10.0
PID_XATTR = "user.bucketfs.pid"


class UsageError(ConfigError):
    """The command line itself is wrong (argparse's complaints)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Mount object-storage buckets as directories.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    mount = commands.add_parser(
        "mount",
        help="mount SOURCE at MOUNTPOINT",
        description="Mount SOURCE (s3://[BUCKET[/PREFIX]] or local://[BUCKET[/PREFIX]]) at "
        "MOUNTPOINT. Without --foreground the command returns once the mount is ready.",
        epilog="options (-o): " + ", ".join(option_names()) + ". See README.rst.",
    )
    mount.add_argument("source", metavar="SOURCE")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
        help="mount options, comma-separated; may be repeated",
    )  # fmt: skip
    mount.add_argument(
        "-f", "--foreground", action="store_true", help="serve in this process, log to stderr"
    )
    umount = commands.add_parser(
        "umount",
        aliases=["unmount"],
        help="upload what is pending, unmount, and wait for the daemon to exit",
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    return parser


def _wants_debug(argv: Sequence[str]) -> bool:
    values = [v for flag, v in itertools.pairwise(argv) if flag == "-o"]
    values += [a[2:] for a in argv if a.startswith("-o") and len(a) > 2]
    try:
        return parse_flag("debug", parse_options(values).get("debug", "no"))
    except ConfigError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """The `bucketfs` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and "://" in args[0]:  # `bucketfs SOURCE MOUNTPOINT -o ...`, as mount.fuse3 calls
        args.insert(0, "mount")
    debug = _wants_debug(args)
    try:
        ns = _parser().parse_args(args)
        if ns.command == "mount":
            return cmd_mount(ns.source, ns.mountpoint, ns.options, ns.foreground)
        return cmd_umount(ns.mountpoint)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BucketfsError as exc:
        if debug:
            traceback.print_exc()
        note(str(exc))
        return 1
    except Exception as exc:  # a bug: say so on one line, trace only when asked
        if debug:
            traceback.print_exc()
        note(f"internal error: {type(exc).__name__}: {exc} (-o debug shows a traceback)")
        return 1


# --- mount ---------------------------------------------------------------------------------


def cmd_mount(source: str, mountpoint: str, options: Sequence[str], foreground: bool) -> int:
    cfg = build_config(source, mountpoint, options, foreground)
    check_mountpoint(cfg.mountpoint)
    check_fuse()
    from bucketfs.mount import serve  # imports pyfuse3: only once the checks passed

    if foreground:
        logging.basicConfig(level=cfg.log_level, stream=sys.stderr, format=LOG_FORMAT)
        logging.captureWarnings(True)
        serve(cfg, lambda: None)  # serve() logs the mount itself
        return 0
    run_in_background(cfg, serve, ready_timeout=READY_TIMEOUT)
    return 0


def check_mountpoint(path: Path) -> None:
    """Refuse a missing, non-directory or mounted-on mountpoint; clear a stale mount."""
    if is_stale(path):
        warn(f"{path} is a stale mount (its daemon is gone); unmounting it first")
        lazy_unmount(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"mountpoint {path} does not exist (create it: mkdir -p {path})"
        ) from None
    except NotADirectoryError:
        raise ConfigError(f"mountpoint {path} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise ConfigError(f"{path} is already a mountpoint (unmount it first)")


def check_fuse() -> None:
    """Refuse to start without a usable /dev/fuse and fusermount3."""
    try:
        st = os.stat(DEV_FUSE)
    except OSError:
        raise ConfigError(
            f"{DEV_FUSE} does not exist: load the fuse module (modprobe fuse), "
            "or give the container the device (docker run --device /dev/fuse)"
        ) from None
    if not stat.S_ISCHR(st.st_mode):
        raise ConfigError(f"{DEV_FUSE} is not a character device")
    if not shutil.which(FUSERMOUNT):
        raise ConfigError(f"{FUSERMOUNT} not found on PATH: install fuse3 (apt-get install fuse3)")


def is_stale(path: Path) -> bool:
    """True when `path` is a FUSE mount whose daemon is gone ("Transport endpoint is not
    connected"). statfs always asks the daemon; stat may be answered from the kernel's cache."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(path: Path) -> None:
    """Detach a mount whose daemon is gone (`fusermount3 -u -z`)."""
    _fusermount(path, "-u", "-z")


def _fusermount(path: Path, *flags: str) -> None:
    if not shutil.which(FUSERMOUNT):
        raise ConfigError(f"{FUSERMOUNT} not found on PATH: install fuse3 (apt-get install fuse3)")
    done = subprocess.run(
        [FUSERMOUNT, *flags, str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise BucketfsError(f"cannot unmount {path}: {detail[0]}")


# --- umount --------------------------------------------------------------------------------


def cmd_umount(mountpoint: str) -> int:
    path = Path(os.path.abspath(mountpoint))
    if is_stale(path):
        lazy_unmount(path)
        note(f"{path} was a stale mount (its daemon was gone): detached it; nothing to upload")
        return 0
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if not os.path.ismount(path):
        raise ConfigError(f"{path} is not mounted")
    pid = daemon_pid(path)
    try:
        _fusermount(path, "-u")
    except BucketfsError as exc:
        if "busy" in str(exc):
            raise BucketfsError(
                f"{path} is busy: a process has a file open or its working directory there"
            ) from None
        raise
    if pid is None:
        return 0
    ok = wait_gone(
        pid,
        UMOUNT_TIMEOUT,
        UMOUNT_REPORT_INTERVAL,
        lambda t: note(f"waiting for the daemon (pid {pid}) to finish uploading ({t:.0f} s)"),
    )
    if not ok:
        raise BucketfsError(
            f"unmounted {path}, but the daemon (pid {pid}) is still uploading after "
            f"{UMOUNT_TIMEOUT:g} s; what it has not uploaded is uploaded at the next mount"
        )
    return 0


def daemon_pid(path: Path) -> int | None:
    """The pid of the bucketfs daemon serving `path`; ConfigError if it is no bucketfs mount."""
    import xattr

    try:
        return int(xattr.getxattr(str(path), PID_XATTR))
    except (OSError, ValueError):
        fstype, source = mount_entry(path)
        if fstype in ("fuse.bucketfs", "fuse") and source.startswith(("s3://", "local://")):
            warn(f"{path} does not tell its daemon's pid; not waiting for uploads")
            return None
        raise ConfigError(f"{path} is not a bucketfs mount (it is {fstype or 'unknown'})") from None


def mount_entry(path: Path) -> tuple[str, str]:
    """(filesystem type, source) of the mount at `path`, from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    found = ("", "")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if mount_point == target:
                found = (fields[sep + 1], fields[sep + 2])  # the last mount on top wins
    return found


# --- mount(8) helper -------------------------------------------------------------------------


def mount_helper_main(argv: Sequence[str] | None = None) -> int:
    """`mount.bucketfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t TYPE]`, as mount(8) calls it.

    Translates to `bucketfs mount SOURCE MOUNTPOINT -o OPTIONS` (which daemonizes); `-f` (fake)
    only checks the options; `-s`, `-n`, `-v`, `-t` and `-N` are accepted and ignored.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="mount.bucketfs", add_help=True)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-f", dest="fake", action="store_true")
    for flag in ("-s", "-n", "-v"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("-t", dest="type")
    parser.add_argument("-N", dest="namespace")
    try:
        ns = parser.parse_args(args)
        if ns.fake:
            build_config(ns.source, ns.mountpoint, ns.options, foreground=False)
            return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except BucketfsError as exc:
        note(str(exc))
        return 1
    return main(["mount", ns.source, ns.mountpoint, *(f"-o{o}" for o in ns.options)])
