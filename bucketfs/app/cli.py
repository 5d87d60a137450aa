"""The `bucketfs` and `mount.bucketfs` commands.

Owns the command line: argument parsing, the checks made before anything starts, and the
messages users read. Invariants:
- every failure prints exactly one line `bucketfs: <message>` on stderr and exits 1, with no
  traceback unless `-o debug` was given (warnings are extra lines `bucketfs: warning: ...`);
- `mount` checks the mountpoint and the FUSE tooling before it starts a daemon, and clears a
  stale mount (its daemon died: ENOTCONN) instead of failing on it;
- `umount` returns only after the daemon has exited, i.e. after it uploaded what was pending,
  or after a timeout that it reports;
- no credential is ever taken from the command line (it shows in ps): they come from a config
  file (`config.py`), the environment or the AWS credential chain;
- a `--foreground` mount tells systemd about itself when `$NOTIFY_SOCKET` is set: STATUS lines,
  READY=1 only from `on_ready` (the mount is live), STOPPING=1 once unmounted.

Four ways in, one code path: `bucketfs mount ...`; `bucketfs SOURCE MOUNTPOINT -o ...` (how
mount.fuse3 runs us for `mount -t fuse.bucketfs`); `mount.bucketfs` (mount(8)'s helper for
`-t bucketfs`); and `umount.fuse.bucketfs`, umount(8)'s helper, which makes a plain
`umount MOUNTPOINT` wait for the uploads too. The helpers are this same program under another
name (`scripts/install-systemd` links them); `main` dispatches on the name it was called by.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import logging
import os
import re
import stat
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from bucketfs import __version__
from bucketfs.app import client
from bucketfs.app.config import build_mount_config, load_mount_file
from bucketfs.app.daemon import LOG_FORMAT, ServeFn, run_in_background, wait_gone
from bucketfs.app.notify import notify
from bucketfs.app.options import MountConfig, option_names, parse_flag, parse_options
from bucketfs.core.control import XATTR_FLUSH, XATTR_PID
from bucketfs.errors import BucketfsError, ConfigError
from bucketfs.fuse import fusermount

PROG = "bucketfs"
DEV_FUSE = "/dev/fuse"
READY_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 600.0
UMOUNT_REPORT_INTERVAL = 10.0
COMMANDS = ("mount", "umount", "unmount", "status", "flush")
#: the journal adds its own time stamp and our pid
JOURNAL_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


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
        description="Mount SOURCE (s3://[BUCKET[/PREFIX]], local://[BUCKET[/PREFIX]] or "
        "REMOTE:[BUCKET[/PREFIX]] for a remote of a remotes file) at MOUNTPOINT. Without "
        "--foreground the command returns once the mount is ready.",
        epilog="options (-o): " + ", ".join(option_names()) + ". See README.rst.",
    )
    mount.add_argument("source", metavar="SOURCE", nargs="?")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    mount.add_argument(
        "--config", metavar="FILE", type=Path,
        help="a mount file ([mount] source, mountpoint, options; remotes), as systemd units use",
    )  # fmt: skip
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
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    umount.add_argument("--config", metavar="FILE", type=Path, help="unmount this mount file's")
    umount.add_argument(
        "--if-mounted", action="store_true", help="exit 0 when MOUNTPOINT is not mounted"
    )
    status = commands.add_parser(
        "status", help="what is not uploaded yet, uploads in flight, errors, cache use"
    )
    status.add_argument("mountpoint", metavar="MOUNTPOINT")
    status.add_argument("--json", action="store_true", help="print the daemon's JSON report")
    flush = commands.add_parser(
        "flush", help="return once everything (or PATH) is on the server; non-zero if not"
    )
    flush.add_argument("mountpoint", metavar="MOUNTPOINT")
    flush.add_argument("path", metavar="PATH", nargs="?", help="a file or directory in it")
    return parser


def _wants_debug(argv: Sequence[str]) -> bool:
    values = [v for flag, v in itertools.pairwise(argv) if flag == "-o"]
    values += [a[2:] for a in argv if a.startswith("-o") and len(a) > 2]
    try:
        return parse_flag("debug", parse_options(values).get("debug", "no"))
    except ConfigError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """The `bucketfs` console script (also `mount.*` and `umount.*` under those names)."""
    if argv is None:
        name = os.path.basename(sys.argv[0])
        if name.startswith("mount."):
            return mount_helper_main()
        if name.startswith("umount."):
            return umount_helper_main()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS and not args[0].startswith("-") and ":" in args[0]:
        args.insert(0, "mount")  # `bucketfs SOURCE MOUNTPOINT -o ...`, as mount.fuse3 calls
    debug = _wants_debug(args)
    try:
        ns = _parser().parse_args(args)
        if ns.command == "mount":
            return cmd_mount(ns.source, ns.mountpoint, ns.options, ns.foreground, ns.config)
        if ns.command == "status":
            return client.cmd_status(ns.mountpoint, as_json=ns.json)
        if ns.command == "flush":
            return client.cmd_flush(ns.mountpoint, ns.path)
        if ns.config is not None and ns.mountpoint is None:
            ns.mountpoint = load_mount_file(ns.config).mountpoint
        if not ns.mountpoint:
            raise UsageError("umount needs MOUNTPOINT (or --config FILE with one)")
        return cmd_umount(ns.mountpoint, if_mounted=ns.if_mounted)
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


def cmd_mount(
    source: str | None,
    mountpoint: str | None,
    options: Sequence[str],
    foreground: bool,
    config_file: Path | None = None,
) -> int:
    cfg = build_mount_config(source, mountpoint, options, foreground, config_file=config_file)
    check_mountpoint(cfg.mountpoint)
    check_fuse()
    from bucketfs.app.mount import serve  # imports pyfuse3: only once the checks passed

    if foreground:
        serve_foreground(cfg, serve)
        return 0
    run_in_background(cfg, serve, ready_timeout=READY_TIMEOUT)
    return 0


def serve_foreground(cfg: MountConfig, serve: ServeFn) -> None:
    """Serve in this process, logging to stderr (the journal under systemd) and telling
    systemd READY=1 once the mount is live."""
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr, format=foreground_log_format())
    logging.captureWarnings(True)
    what = f"{cfg.fsname} on {cfg.mountpoint}"
    notify(STATUS=f"mounting {what}")

    def on_ready() -> None:  # serve() logs the mount itself
        notify(READY=1, STATUS=f"mounted {what}")

    try:
        serve(cfg, on_ready)
    except BucketfsError as exc:
        notify(STATUS=f"failed: {exc}")
        raise
    notify(STOPPING=1, STATUS=f"unmounted {what}")


def foreground_log_format(env: Mapping[str, str] | None = None) -> str:
    """Without a time stamp when stderr is the journal (`$JOURNAL_STREAM` names it)."""
    stream = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return LOG_FORMAT
    return JOURNAL_LOG_FORMAT if stream == f"{st.st_dev}:{st.st_ino}" else LOG_FORMAT


def check_mountpoint(path: Path) -> None:
    """Refuse a missing, non-directory or mounted-on mountpoint; clear a stale mount."""
    if is_stale(path):
        warn(f"{path} is a stale mount (its daemon is gone); unmounting it first")
        fusermount.unmount(path, lazy=True)
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
    fusermount.require()


def is_stale(path: Path) -> bool:
    """True when `path` is a FUSE mount whose daemon is gone ("Transport endpoint is not
    connected"). statfs always asks the daemon; stat may be answered from the kernel's cache."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


# --- umount --------------------------------------------------------------------------------


def cmd_umount(mountpoint: str, *, if_mounted: bool = False) -> int:
    path = Path(os.path.abspath(mountpoint))
    if is_stale(path):
        fusermount.unmount(path, lazy=True)
        note(f"{path} was a stale mount (its daemon was gone): detached it; nothing to upload")
        return 0
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if not os.path.ismount(path):
        if if_mounted:
            return 0
        raise ConfigError(f"{path} is not mounted")
    pid = daemon_pid(path)
    # upload first, while the mount still answers: so we can say whether everything made it
    not_uploaded = None
    try:
        os.setxattr(path, XATTR_FLUSH, b"")
    except OSError as exc:
        # a read-only mount has nothing to upload; ENOTSUP: a daemon without flush
        if exc.errno not in (errno.EROFS, errno.ENOTSUP, errno.EOPNOTSUPP):
            not_uploaded = exc.strerror
    try:
        fusermount.unmount(path)
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
    if not_uploaded is not None:
        raise BucketfsError(
            f"unmounted {path}, but some files could not be uploaded ({not_uploaded}); they "
            "stay in the cache directory and are uploaded by the next mount of this source"
        )
    return 0


def daemon_pid(path: Path) -> int | None:
    """The pid of the bucketfs daemon serving `path`; ConfigError if it is no bucketfs mount."""
    import xattr

    try:
        return int(xattr.getxattr(str(path), XATTR_PID))
    except (OSError, ValueError):
        fstype, source = mount_entry(path)
        if fstype == "fuse.bucketfs" or (fstype == "fuse" and "://" in source):
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
            build_mount_config(ns.source, ns.mountpoint, ns.options, foreground=False)
            return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except BucketfsError as exc:
        note(str(exc))
        return 1
    return main(["mount", ns.source, ns.mountpoint, *(f"-o{o}" for o in ns.options)])


def umount_helper_main(argv: Sequence[str] | None = None) -> int:
    """`umount.fuse.bucketfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]`, as umount(8) calls it.

    Makes `umount MOUNTPOINT` (and systemd stopping a .mount unit) wait for the uploads, as
    `bucketfs umount` does. `-l` detaches lazily and `-f` forces (neither waits for uploads:
    the daemon finishes in the background); `-n`, `-r`, `-v`, `-N` and `-t` are ignored.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(prog="umount.bucketfs", add_help=True)
    parser.add_argument("mountpoint")
    for flag in ("-f", "-l", "-n", "-r", "-v"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("-t", dest="type")
    parser.add_argument("-N", dest="namespace")
    try:
        ns = parser.parse_args(args)
        if ns.l:
            fusermount.unmount(Path(os.path.abspath(ns.mountpoint)), lazy=True)
            return 0
        if ns.f:  # umount(8) itself, without helpers (-i): aborts the FUSE connection
            return fusermount.abort(ns.mountpoint)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except BucketfsError as exc:
        note(str(exc))
        return 1
    return main(["umount", ns.mountpoint])
