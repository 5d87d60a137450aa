"""The `bucketfs` command as users run it: exit codes and the one line it prints on stderr.

Three groups:
- refusals made before anything starts (no daemon, no network): options, sources, mountpoints,
  missing FUSE tooling, `umount` of something that is no bucketfs mount;
- the background machinery (fork, readiness pipe, syslog/file logging, `umount` waiting for the
  daemon, stale mounts after kill -9), driven by a minimal pyfuse3 filesystem that stands in for
  `bucketfs.app.mount.serve`, so it is tested whatever the real filesystem does;
- real mounts through `bucketfs.app.mount.serve` against the local store and SeaweedFS, and the
  errors users meet there (missing bucket, refused credentials, unreachable endpoint).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketfs.app.daemon import process_gone
from tests.support.servers import SeaweedServer, free_port, unique_bucket

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting in these tests needs root")


def bucketfs(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m bucketfs ARGS` the way a user runs `bucketfs ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "bucketfs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exit status 1 and exactly one `bucketfs: ...` line."""
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bucketfs: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def is_stale(path: Path) -> bool:
    try:
        os.statvfs(path)  # stat() may be answered from the kernel's attribute cache
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def force_unmount(path: Path) -> None:
    if os.path.ismount(path) or is_stale(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mp"
    path.mkdir()
    try:
        yield path
    finally:
        force_unmount(path)


@contextlib.contextmanager
def tmpfs_on(path: Path) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "none", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


# --- refusals before anything starts -------------------------------------------------------


def test_version() -> None:
    done = bucketfs("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("bucketfs ")


def test_unknown_option(mp: Path) -> None:
    line = one_error(bucketfs("mount", "s3://bucket", str(mp), "-o", "ro,foo=1"))
    assert "unknown option 'foo'" in line


def test_bad_option_value(mp: Path) -> None:
    line = one_error(bucketfs("mount", "local://demo", str(mp), "-o", "umask=999"))
    assert "'umask'" in line
    assert "'999'" in line


def test_bad_source(mp: Path) -> None:
    line = one_error(bucketfs("mount", "gs://bucket", str(mp)))
    assert "bad source 'gs://bucket'" in line


def test_usage_error_is_one_line() -> None:
    line = one_error(bucketfs("mount", "s3://bucket"))
    assert "MOUNTPOINT" in line


def test_mountpoint_missing(tmp_path: Path) -> None:
    line = one_error(bucketfs("mount", "local://demo", str(tmp_path / "nope")))
    assert f"mountpoint {tmp_path / 'nope'} does not exist" in line


def test_mountpoint_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    line = one_error(bucketfs("mount", "local://demo", str(tmp_path / "file")))
    assert f"mountpoint {tmp_path / 'file'} is not a directory" in line


def test_mountpoint_already_mounted(mp: Path) -> None:
    with tmpfs_on(mp):
        line = one_error(bucketfs("mount", "local://demo", str(mp)))
    assert f"{mp} is already a mountpoint" in line


def test_no_fusermount3(mp: Path) -> None:
    env = dict(os.environ, PATH="/nonexistent")
    line = one_error(bucketfs("mount", "local://demo", str(mp), env=env))
    assert "fusermount3 not found" in line


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_no_dev_fuse(mp: Path) -> None:
    """In a private mount namespace with an empty /dev, as in a container without the device."""
    script = 'mount -t tmpfs none /dev && exec "$@"'
    done = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
            *(sys.executable, "-m", "bucketfs", "mount", "local://demo", str(mp)),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert "/dev/fuse does not exist" in one_error(done)


def test_umount_not_mounted(mp: Path) -> None:
    assert f"{mp} is not mounted" in one_error(bucketfs("umount", str(mp)))


def test_umount_missing(tmp_path: Path) -> None:
    assert "does not exist" in one_error(bucketfs("umount", str(tmp_path / "nope")))


def test_umount_not_bucketfs(mp: Path) -> None:
    with tmpfs_on(mp):
        line = one_error(bucketfs("umount", str(mp)))
        assert f"{mp} is not a bucketfs mount (it is tmpfs)" in line
        assert os.path.ismount(mp)


def test_mount_helper_fake_checks_options(mp: Path) -> None:
    code = "import sys; from bucketfs.app.cli import mount_helper_main as m; sys.exit(m())"
    run = [sys.executable, "-c", code, "s3://bucket", str(mp)]
    ok = subprocess.run([*run, "-f", "-o", "defaults,_netdev,ro"], capture_output=True, check=False)
    assert ok.returncode == 0, ok
    bad = subprocess.run(
        [*run, "-f", "-o", "rw,bogus"], capture_output=True, text=True, check=False
    )
    assert "unknown option 'bogus'" in one_error(bad)


# --- the background machinery, with a stand-in for bucketfs.app.mount.serve ----------------------

#: Runs `bucketfs.app.cli.main` with a minimal pyfuse3 filesystem installed as `bucketfs.app.mount`.
#: Its behaviour comes from STUB: "ok", "fail" (BucketfsError before ready), "die" (exit before
#: ready), "hang" (never ready), "slow-exit" (2 s of "uploading" after unmount).
STUB_RUNNER = textwrap.dedent(
    """
    import errno, logging, os, stat, sys, time, types
    import pyfuse3, trio
    from bucketfs.app import cli, daemon
    from bucketfs.errors import BucketfsError

    class Ops(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            if inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr = pyfuse3.EntryAttributes()
            attr.st_ino = inode
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            return attr

        async def lookup(self, parent, name, ctx=None):
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            return None

        async def getxattr(self, inode, name, ctx):
            if name == b"user.bucketfs.pid":
                return str(os.getpid()).encode()
            raise pyfuse3.FUSEError(errno.ENODATA)

    def serve(cfg, on_ready):
        how = os.environ.get("STUB", "ok")
        if how == "fail":
            raise BucketfsError("bucket 'nope' does not exist")
        if how == "die":
            os._exit(3)
        if how == "hang":
            time.sleep(3600)
        options = set(pyfuse3.default_options)
        options |= {"fsname=" + cfg.fsname, "subtype=bucketfs"}
        pyfuse3.init(Ops(), str(cfg.mountpoint), options)
        logging.getLogger("stub").info("stub serving %s", cfg.fsname)
        on_ready()
        try:
            trio.run(pyfuse3.main)
        finally:
            pyfuse3.close(unmount=False)
        if how == "slow-exit":
            time.sleep(2)

    sys.modules["bucketfs.app.mount"] = types.SimpleNamespace(serve=serve)
    # a file in <cache_dir> unless the test provides a syslog socket
    daemon.SYSLOG_SOCKET = os.environ.get("SYSLOG_SOCKET", "/nonexistent")
    cli.READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "60"))
    cli.UMOUNT_REPORT_INTERVAL = 1.0
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def stub(
    *args: str, how: str = "ok", timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", STUB_RUNNER, *args],
        capture_output=True,  # also proves the daemon does not hold our stdout/stderr
        text=True,
        env={**os.environ, "STUB": how, **env},
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def daemon_pid(path: Path) -> int:
    import xattr

    return int(xattr.getxattr(str(path), "user.bucketfs.pid"))


def test_background_mount_and_umount(mp: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = stub("mount", "local://demo", str(mp), "-o", f"cache_dir={cache},store={tmp_path}")
    assert done.returncode == 0, done
    assert done.stderr == ""
    assert os.path.ismount(mp)
    pid = daemon_pid(mp)
    assert os.getsid(pid) == pid  # its own session: no terminal signals reach it
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    with open("/proc/self/mountinfo") as f:
        assert any(f" {mp} " in line and " local://demo " in line for line in f)
    assert "stub serving local://demo" in (cache / "bucketfs.log").read_text()

    done = stub("umount", str(mp))
    assert done.returncode == 0, done
    assert not os.path.ismount(mp)
    assert process_gone(pid)


def test_background_logs_to_syslog(mp: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(30)
        cache = tmp_path / "cache"
        done = stub(
            "mount", "local://demo", str(mp), "-o", f"cache_dir={cache}",
            SYSLOG_SOCKET=str(tmp_path / "log"),
        )  # fmt: skip
        assert done.returncode == 0, done
        pid = daemon_pid(mp)
        message = syslog.recv(4096).decode()
    assert f"bucketfs[{pid}]: INFO stub: stub serving local://demo" in message
    assert not (cache / "bucketfs.log").exists()
    assert stub("umount", str(mp)).returncode == 0


def test_umount_waits_for_the_daemon(mp: Path) -> None:
    assert stub("mount", "local://demo", str(mp), how="slow-exit").returncode == 0
    pid = daemon_pid(mp)
    started = time.monotonic()
    done = stub("umount", str(mp))
    assert done.returncode == 0, done
    assert time.monotonic() - started >= 1.5
    assert process_gone(pid)
    assert f"waiting for the daemon (pid {pid})" in done.stderr


def test_error_before_ready_is_reported(mp: Path) -> None:
    line = one_error(stub("mount", "local://nope", str(mp), how="fail"))
    assert line == "bucketfs: bucket 'nope' does not exist"
    assert not os.path.ismount(mp)


def test_unwritable_log_file_is_reported(mp: Path) -> None:
    line = one_error(stub("mount", "local://demo", str(mp), "-o", "cache_dir=/proc/nope"))
    assert line == (
        "bucketfs: cannot write the log file /proc/nope/bucketfs.log: No such file or directory"
    )


def test_daemon_dying_before_ready_is_reported(mp: Path) -> None:
    line = one_error(stub("mount", "local://demo", str(mp), how="die"))
    assert "the daemon exited with status 3 before the mount was ready" in line


def test_daemon_never_ready_is_killed(mp: Path) -> None:
    started = time.monotonic()
    line = one_error(stub("mount", "local://demo", str(mp), how="hang", READY_TIMEOUT="2"))
    assert "the mount was not ready after 2 s" in line
    assert time.monotonic() - started < 20


def test_foreground_serves_in_this_process(mp: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUB_RUNNER, "mount", "-f", "local://demo", str(mp)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert proc.poll() is None, proc.stderr
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert daemon_pid(mp) == proc.pid
        assert stub("umount", str(mp)).returncode == 0
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_stale_mount_is_cleared_by_umount(mp: Path) -> None:
    assert stub("mount", "local://demo", str(mp)).returncode == 0
    os.kill(daemon_pid(mp), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_stale(mp):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = stub("umount", str(mp))
    assert done.returncode == 0, done
    assert "was a stale mount" in done.stderr
    assert not os.path.ismount(mp)
    assert not is_stale(mp)


def test_stale_mount_is_mounted_over(mp: Path) -> None:
    assert stub("mount", "local://demo", str(mp)).returncode == 0
    os.kill(daemon_pid(mp), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_stale(mp):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = stub("mount", "local://demo", str(mp))
    assert done.returncode == 0, done
    assert done.stderr.splitlines() == [
        f"bucketfs: warning: {mp} is a stale mount (its daemon is gone); unmounting it first"
    ]
    assert os.path.ismount(mp)
    daemon_pid(mp)  # answered by the new daemon
    assert stub("umount", str(mp)).returncode == 0


# --- real mounts through bucketfs.app.mount.serve (the lead's) --------------------------------


def mount_ok(*args: str, env: dict[str, str] | None = None) -> None:
    done = bucketfs("mount", *args, env=env)
    assert done.returncode == 0, done
    assert done.stderr == ""


def umount_ok(path: Path) -> None:
    done = bucketfs("umount", str(path))
    assert done.returncode == 0, done
    assert not os.path.ismount(path)


@pytest.fixture
def demo_store(tmp_path: Path) -> Path:
    """A local store holding bucket `demo` with one object `hello.txt`."""
    import trio

    from bucketfs.backends.local.backend import LocalBackend

    root = tmp_path / "store"
    root.mkdir()

    async def fill() -> None:
        backend = LocalBackend(root)
        await backend.create_bucket("demo")
        await backend.put("demo", "hello.txt", b"hello\n")
        await backend.aclose()

    trio.run(fill)
    return root


def test_mount_local(demo_store: Path, mp: Path, tmp_path: Path) -> None:
    mount_ok("local://demo", str(mp), "-o", f"store={demo_store},cache_dir={tmp_path / 'c'}")
    try:
        assert (mp / "hello.txt").read_text() == "hello\n"
        (mp / "new.txt").write_text("new\n")
        assert sorted(os.listdir(mp)) == ["hello.txt", "new.txt"]
    finally:
        umount_ok(mp)
    mount_ok("local://demo", str(mp), "-o", f"store={demo_store},cache_dir={tmp_path / 'c'}")
    try:
        assert (mp / "new.txt").read_text() == "new\n"
    finally:
        umount_ok(mp)


def test_mount_local_missing_bucket(demo_store: Path, mp: Path) -> None:
    line = one_error(bucketfs("mount", "local://nope", str(mp), "-o", f"store={demo_store}"))
    assert "nope" in line
    assert not os.path.ismount(mp)


def test_mount_s3(seaweed: SeaweedServer, s3_bucket: str, mp: Path, tmp_path: Path) -> None:
    opts = f"endpoint={seaweed.endpoint},addressing=path,cache_dir={tmp_path / 'c'}"
    mount_ok(f"s3://{s3_bucket}/sub", str(mp), "-o", opts, env=seaweed.env())
    try:
        (mp / "file.txt").write_bytes(b"through the mount")
    finally:
        umount_ok(mp)  # returns once uploaded
    body = seaweed.client().get_object(Bucket=s3_bucket, Key="sub/file.txt")["Body"].read()
    assert body == b"through the mount"


def test_mount_s3_missing_bucket(seaweed: SeaweedServer, mp: Path) -> None:
    name = unique_bucket("missing")
    line = one_error(
        bucketfs(
            "mount",
            f"s3://{name}",
            str(mp),
            "-o",
            f"endpoint={seaweed.endpoint}",
            env=seaweed.env(),
        )
    )
    assert name in line
    assert not os.path.ismount(mp)


def test_mount_s3_bad_credentials(seaweed: SeaweedServer, s3_bucket: str, mp: Path) -> None:
    env = seaweed.env() | {"AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    line = one_error(
        bucketfs(
            "mount",
            f"s3://{s3_bucket}",
            str(mp),
            "-o",
            f"endpoint={seaweed.endpoint}",
            env=env,
        )
    )
    assert any(word in line.lower() for word in ("credential", "denied", "signature"))
    assert not os.path.ismount(mp)


def test_mount_s3_unreachable(seaweed: SeaweedServer, mp: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    line = one_error(
        bucketfs("mount", "s3://bucket", str(mp), "-o", f"endpoint={endpoint}", env=seaweed.env())
    )
    assert "127.0.0.1" in line
    assert time.monotonic() - started < 65  # within the 60 s readiness limit
    assert not os.path.ismount(mp)


def test_stale_real_mount_after_kill_9(demo_store: Path, mp: Path, tmp_path: Path) -> None:
    opts = f"store={demo_store},cache_dir={tmp_path / 'c'}"
    mount_ok("local://demo", str(mp), "-o", opts)
    os.kill(daemon_pid(mp), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_stale(mp):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = bucketfs("mount", "local://demo", str(mp), "-o", opts)
    assert done.returncode == 0, done
    assert "stale mount" in done.stderr
    assert (mp / "hello.txt").read_text() == "hello\n"
    umount_ok(mp)
