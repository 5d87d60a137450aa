"""Running the mount in the background, and waiting for a daemon to go away.

Owns the fork between `bucketfs mount` (the parent, which the user waits on) and the daemon (the
child, which serves the mount until it is unmounted). Invariants:
- the parent returns only when the mount is ready, or has failed, or `ready_timeout` passed (then
  the child is killed and a mount it left behind is detached): it never leaves a half-made mount
  and a running child behind while reporting failure;
- the parent learns the outcome through one line on a pipe: "OK" or "ERR <message>"; end of file
  without a line means the child died, and is reported with its exit status;
- the child holds none of the parent's stdin, stdout or stderr (so `$(bucketfs mount ...)` and
  `subprocess.run(..., capture_output=True)` return), nor its working directory, nor any other
  inherited descriptor; its logs go to syslog (/dev/log) or, without syslog, to
  `<cache_dir>/bucketfs.log`, which also receives what C code writes to stdout/stderr.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import select
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bucketfs.app.options import MountConfig
from bucketfs.errors import BucketfsError, ConfigError
from bucketfs.fuse import fusermount

log = logging.getLogger(__name__)

ServeFn = Callable[[MountConfig, Callable[[], None]], None]

SYSLOG_SOCKET = "/dev/log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def log_file(cfg: MountConfig) -> Path:
    return cfg.cache_dir / "bucketfs.log"


def log_destination(cfg: MountConfig) -> str:
    """Where a daemon for `cfg` writes its logs, in words for an error message."""
    if _syslog_available():
        return "syslog (journalctl -t bucketfs)"
    return str(log_file(cfg))


def _syslog_available() -> bool:
    try:
        return stat.S_ISSOCK(os.stat(SYSLOG_SOCKET).st_mode)
    except OSError:
        return False


def run_in_background(cfg: MountConfig, serve: ServeFn, *, ready_timeout: float = 60.0) -> None:
    """Fork a daemon that runs `serve(cfg, on_ready)`; return once the mount is ready.

    Raises BucketfsError with the daemon's own message if it failed before it was ready.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon; never returns
        os.close(read_fd)
        _run_child(cfg, serve, write_fd)
    os.close(write_fd)
    try:
        _wait_ready(cfg, pid, read_fd, ready_timeout)
    finally:
        os.close(read_fd)


def _wait_ready(cfg: MountConfig, pid: int, read_fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_and_detach(cfg, pid)
                raise BucketfsError(
                    f"the mount was not ready after {timeout:g} s; stopped the daemon "
                    f"(logs: {log_destination(cfg)})"
                )
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if readable:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    break
                data += chunk
    except KeyboardInterrupt:
        _kill_and_detach(cfg, pid, signal.SIGTERM)
        raise
    line = data.partition(b"\n")[0].decode("utf-8", "replace")
    if line == "OK":
        return
    if line.startswith("ERR "):
        raise BucketfsError(line[4:])
    _, status = os.waitpid(pid, 0)
    raise BucketfsError(
        f"the daemon {describe_status(status)} before the mount was ready "
        f"(logs: {log_destination(cfg)})"
    )


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _kill_and_detach(cfg: MountConfig, pid: int, sig: int = signal.SIGKILL) -> None:
    """Stop a daemon that never became ready, and detach a mount it may have left behind."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    try:
        os.stat(cfg.mountpoint)
    except OSError:  # ENOTCONN: the kernel still has the mount, nobody serves it
        fusermount.detach(cfg.mountpoint)


def _run_child(cfg: MountConfig, serve: ServeFn, write_fd: int) -> None:
    """The daemon: detach, set up logging, serve until unmounted, then exit. Never returns."""
    ready = False

    def report(line: str) -> None:
        nonlocal ready
        if ready:
            return
        ready = True
        with contextlib.suppress(OSError):  # the parent gave up (killed, Ctrl-C): nobody reads
            os.write(write_fd, line.replace("\n", " ").encode() + b"\n")
        with contextlib.suppress(OSError):
            os.close(write_fd)

    def on_ready() -> None:  # serve() logs the mount itself
        report("OK")

    code = 0
    try:
        os.setsid()
        os.chdir("/")
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 65536)
        _detach_stdio_and_log(cfg)
        serve(cfg, on_ready)
    except BucketfsError as exc:
        code = 1
        log.error("%s", exc)
        report(f"ERR {exc}")
    except BaseException as exc:
        code = 1
        log.exception("the daemon failed")
        report(f"ERR internal error: {type(exc).__name__}: {exc} (logs: {log_destination(cfg)})")
    finally:
        logging.shutdown()
        os._exit(code)


def _detach_stdio_and_log(cfg: MountConfig) -> None:
    """Point fds 0-2 away from the parent's and send log records to syslog or a file."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # first of all: from here on nothing reaches the parent's terminal
        os.dup2(devnull, fd)
    os.close(devnull)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(cfg.log_level)
    logging.captureWarnings(True)
    handler: logging.Handler
    if _syslog_available():
        syslog = logging.handlers.SysLogHandler(SYSLOG_SOCKET)
        syslog.ident = f"bucketfs[{os.getpid()}]: "
        handler = syslog
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:  # no syslog daemon (a container): a file in the cache directory, also for fds 1-2
        path = log_file(cfg)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write the log file {path}: {exc.strerror}") from None
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FILE_LOG_FORMAT))
    root.addHandler(handler)


# --- waiting for a daemon to exit (umount) ----------------------------------------------------


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def wait_gone(
    pid: int,
    timeout: float,
    interval: float,
    on_wait: Callable[[float], None],
    poll: float = 0.1,
) -> bool:
    """Wait until `pid` is gone; call `on_wait(elapsed)` every `interval` s. False on timeout."""
    start = time.monotonic()
    next_report = start + interval
    while not process_gone(pid):
        now = time.monotonic()
        if now - start >= timeout:
            return False
        if now >= next_report:
            on_wait(now - start)
            next_report += interval
        time.sleep(poll)
    return True
