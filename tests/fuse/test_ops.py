"""Operating bucketfs: mount(8), fstab, umount(8), systemd units and sd_notify, config files,
secrets, stale mounts. Everything through the real programs against SeaweedFS on loopback.

mount(8) finds helpers in /sbin only and runs them without PATH, so the tests that go through it
run in a private mount namespace where `scripts/install-systemd --root` output is laid over
/usr/sbin and /usr/local/bin (overlayfs): exactly what the script installs on a machine, without
touching this one. Mounts made there are invisible outside, so such a test runs its steps as one
shell script inside and checks the bucket from outside afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bucketfs.app.daemon import process_gone
from tests.support.servers import SeaweedServer, unique_bucket

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BUCKETFS = str(VENV_BIN / "bucketfs")
UNITS = REPO / "systemd"
SECRET = "ops-test-secret-must-never-show-0123"  # a value that must not leak from a failure

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting in these tests needs root")


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def is_stale(path: Path) -> bool:
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def daemon_pid(path: Path) -> int:
    import xattr

    return int(xattr.getxattr(str(path), "user.bucketfs.pid"))


@pytest.fixture
def mp(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mp"
    path.mkdir()
    try:
        yield path
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = daemon_pid(path)
        if os.path.ismount(path) or is_stale(path):
            run("fusermount3", "-u", "-z", str(path))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Remote:
    """A bucket on SeaweedFS, reachable as remote `sw` of a remotes file with its keys."""

    server: SeaweedServer
    bucket: str
    config_home: Path
    env: dict[str, str]  # no AWS credentials: they come from the file only

    @property
    def file(self) -> Path:
        return self.config_home / "bucketfs" / "remotes.conf"

    def get(self, key: str) -> bytes:
        body = self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return bytes(body)

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture
def remote(seaweed: SeaweedServer, tmp_path: Path) -> Remote:
    """Remote `sw` in $XDG_CONFIG_HOME/bucketfs/remotes.conf (mode 600) with the server's keys,
    which are in no environment variable."""
    bucket = unique_bucket("ops")
    seaweed.client().create_bucket(Bucket=bucket)
    home = tmp_path / "config"
    path = home / "bucketfs" / "remotes.conf"
    path.parent.mkdir(parents=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            [sw]
            type = s3
            endpoint = {seaweed.endpoint}
            region = {seaweed.region}
            addressing = path
            access_key_id = {seaweed.access_key}
            secret_access_key = {seaweed.secret_key}
            """
        )
    )
    path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        XDG_CONFIG_HOME=str(home),
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return Remote(seaweed, bucket, home, env)


# --- mount -t fuse.bucketfs: mount.fuse3 runs `bucketfs SOURCE MOUNTPOINT -o OPTIONS` ---------


def test_mount_fuse3_runs_bucketfs_from_path(
    seaweed: SeaweedServer, s3_bucket: str, mp: Path, tmp_path: Path
) -> None:
    """What `mount -t fuse.bucketfs` does, with the venv's bin on PATH; `umount MP` (no helper
    installed here) unmounts, and the daemon finishes and exits by itself."""
    seaweed.client().put_object(Bucket=s3_bucket, Key="sub/hello.txt", Body=b"hello\n")
    env = seaweed.env() | {"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    fstab_options = "rw,defaults,_netdev,nofail,noauto,user,users,x-systemd.automount,comment=x"
    options = f"{fstab_options},endpoint={seaweed.endpoint},addressing=path"
    options += f",cache_dir={tmp_path / 'cache'}"
    source = f"s3://{s3_bucket}/sub"
    done = run("mount.fuse3", source, str(mp), "-o", options, "-t", "fuse.bucketfs", env=env)
    assert done.returncode == 0, done
    assert done.stderr == ""
    with open("/proc/self/mounts") as f:
        assert f"s3://{s3_bucket}/sub {mp} fuse.bucketfs rw," in f.read()
    assert (mp / "hello.txt").read_text() == "hello\n"
    (mp / "new.txt").write_text("written through mount -t fuse.bucketfs\n")
    pid = daemon_pid(mp)

    done = run("umount", str(mp))
    assert done.returncode == 0, done
    assert not os.path.ismount(mp)
    wait_for(lambda: process_gone(pid), "the daemon to exit", 60)
    body = seaweed.client().get_object(Bucket=s3_bucket, Key="sub/new.txt")["Body"].read()
    assert body == b"written through mount -t fuse.bucketfs\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("bogus", "bucketfs: unknown option 'bogus'"),
        ("umask=999", "bucketfs: bad value for option 'umask': '999'"),
        (f"secret_access_key={SECRET}", "bucketfs: option 'secret_access_key' is not accepted"),
    ],
)
def test_mount_fuse3_bad_options(mp: Path, option: str, message: str) -> None:
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    options = f"rw,_netdev,{option}"
    done = run("mount.fuse3", "s3://bucket", str(mp), "-o", options, "-t", "fuse.bucketfs", env=env)
    assert done.returncode != 0
    assert message in done.stderr
    assert SECRET not in done.stderr
    assert not os.path.ismount(mp)


def test_bucketfs_without_mount_command(mp: Path) -> None:
    """`bucketfs SOURCE MOUNTPOINT ...` means `bucketfs mount ...` (remote sources too)."""
    done = run(BUCKETFS, "nosuchremote:bkt", str(mp), "-o", "ro")
    assert done.returncode == 1
    assert done.stderr.startswith("bucketfs: unknown remote 'nosuchremote'")


# --- mount(8), fstab and umount(8) with the helpers installed ---------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`scripts/install-systemd --root DIR`, run twice (it must be idempotent)."""
    root = tmp_path_factory.mktemp("installed")
    for _ in range(2):
        done = run("bash", str(REPO / "scripts" / "install-systemd"), "--root", str(root))
        assert done.returncode == 0, done
    return root


def in_namespace(
    root: Path, script: str, env: dict[str, str], mp: Path
) -> subprocess.CompletedProcess[str]:
    """Run `script` (bash -eux) in a private mount namespace with `root` laid over the system."""
    prelude = f"""
        mount -t overlay overlay -o lowerdir=/usr/sbin:{root}/sbin /usr/sbin
        mount -t overlay overlay -o lowerdir=/usr/local/bin:{root}/usr/local/bin /usr/local/bin
        trap 'umount -i -l {mp} 2>/dev/null || fusermount3 -u -z {mp} 2>/dev/null || true' EXIT
    """
    return run(
        "unshare", "--mount", "--propagation", "private",
        "bash", "-euxo", "pipefail", "-c", textwrap.dedent(prelude) + textwrap.dedent(script),
        env=env,
    )  # fmt: skip


def test_install_systemd(installed: Path) -> None:
    bucketfs = installed / "usr/local/bin/bucketfs"
    assert os.readlink(bucketfs) == BUCKETFS
    helpers = ("mount.bucketfs", "mount.fuse.bucketfs", "umount.bucketfs", "umount.fuse.bucketfs")
    for helper in helpers:
        assert os.readlink(installed / "sbin" / helper) == "/usr/local/bin/bucketfs"
    unit = installed / "etc/systemd/system/bucketfs@.service"
    assert unit.read_text() == (UNITS / "bucketfs@.service").read_text()
    assert (installed / "etc/bucketfs/example.conf.sample").stat().st_mode & 0o777 == 0o644
    examples = installed / "usr/local/share/doc/bucketfs/examples"
    assert sorted(p.name for p in examples.iterdir()) == [
        "mnt-photos.automount",
        "mnt-photos.mount",
    ]


def test_mount_t_bucketfs_and_fstab(
    installed: Path, remote: Remote, mp: Path, tmp_path: Path
) -> None:
    """`mount -t bucketfs`, `mount MP` and `mount -a` from an fstab, `umount MP`; keys from the
    remotes file; with `helper=bucketfs` umount(8) runs umount.bucketfs, which waits until the
    daemon uploaded everything and exited."""
    remote.put("hello.txt", b"hello\n")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"# a comment\nsw:{remote.bucket}  {mp}  fuse.bucketfs  "
        "defaults,_netdev,nofail,users,x-systemd.automount,helper=bucketfs,"
        f"cache_dir={tmp_path / 'c2'}  0  0\n"
    )
    script = f"""
        gone() {{ ! kill -0 "$1" 2>/dev/null || grep -q ") [ZX] " /proc/"$1"/stat; }}
        mount -t bucketfs sw:{remote.bucket} {mp} -o helper=bucketfs,cache_dir={tmp_path / "c1"}
        test "$(cat {mp}/hello.txt)" = hello
        echo one > {mp}/one.txt
        pid=$(getfattr --only-values -n user.bucketfs.pid {mp})
        umount {mp}
        gone "$pid"

        mount -T {fstab} {mp}
        grep -q "TARGET={mp} .*helper=bucketfs" /run/mount/utab  # umount(8) will use our helper
        findmnt -n -o FSTYPE,SOURCE {mp}
        test "$(cat {mp}/one.txt)" = one
        echo two > {mp}/two.txt
        mount -a -T {fstab}   # mounted already: nothing to do
        test "$(findmnt -n {mp} | wc -l)" = 1
        pid=$(getfattr --only-values -n user.bucketfs.pid {mp})
        umount {mp}
        gone "$pid"

        mount -a -T {fstab}
        test "$(cat {mp}/two.txt)" = two
        umount {mp}
        ! mountpoint -q {mp}
    """
    done = in_namespace(installed, script, remote.env, mp)
    assert done.returncode == 0, done.stderr
    assert "fuse.bucketfs sw:" in done.stderr + done.stdout
    assert remote.get("one.txt") == b"one\n"
    assert remote.get("two.txt") == b"two\n"


# --- systemd units and sd_notify ------------------------------------------------------------


def test_units_verify_clean(installed: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` says nothing about any unit: a copy with ExecStart pointing at
    the venv here, and the installed units unchanged where /usr/local/bin/bucketfs exists."""
    units = tmp_path / "units"
    units.mkdir()
    for unit in ("bucketfs@.service", "mnt-photos.mount", "mnt-photos.automount"):
        text = (UNITS / unit).read_text().replace("/usr/local/bin/bucketfs", BUCKETFS)
        (units / unit).write_text(text)
    names = ["bucketfs@photos.service", "mnt-photos.mount", "mnt-photos.automount"]
    done = run("systemd-analyze", "verify", *(str(units / n) for n in names))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")

    system = installed / "etc/systemd/system"
    examples = installed / "usr/local/share/doc/bucketfs/examples"
    script = f"""
        systemd-analyze verify {system}/bucketfs@photos.service {examples}/mnt-photos.mount \\
            {examples}/mnt-photos.automount 2>&1 | tee /dev/stderr | (! grep .)
    """
    done = in_namespace(installed, script, dict(os.environ), tmp_path)
    assert done.returncode == 0, done.stderr


def unit_settings(path: Path) -> dict[str, str]:
    settings = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


def test_service_unit_settings() -> None:
    unit = unit_settings(UNITS / "bucketfs@.service")
    assert unit["Type"] == "notify"
    assert unit["After"] == unit["Wants"] == "network-online.target"
    assert unit["Before"] == "remote-fs.target"
    assert unit["Restart"] == "on-failure"
    assert unit["ExecStart"].endswith("mount --foreground --config /etc/bucketfs/%i.conf")
    assert unit["ExecStop"].endswith("umount --if-mounted --config /etc/bucketfs/%i.conf")
    assert unit["TimeoutStopSec"] == "15min"  # > mount.DRAIN_TIMEOUT (10 min) + umount's wait
    assert int(unit["LimitNOFILE"]) >= 4096  # systemd's default soft limit is 1024


def test_notify_protocol(remote: Remote, mp: Path, tmp_path: Path) -> None:
    """What systemd sees from `bucketfs@NAME.service`: STATUS, READY=1 only once the mount is
    live, STOPPING=1 after ExecStop's `bucketfs umount --config`; logs on stderr at INFO."""
    remote.put("hello.txt", b"hello\n")
    conf = tmp_path / "photos.conf"
    conf.write_text(f"[mount]\nsource = sw:{remote.bucket}\nmountpoint = {mp}\n")
    conf.chmod(0o644)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(30)
    env = remote.env | {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    with listener, open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen(
            [BUCKETFS, "mount", "--foreground", "--config", str(conf)], env=env, stderr=stderr
        )
        try:
            messages: list[str] = []
            live_at_ready = False
            while not any("READY=1" in m for m in messages):
                messages.append(listener.recv(4096).decode())
                live_at_ready = os.path.ismount(mp) and (mp / "hello.txt").read_text() == "hello\n"
            assert live_at_ready
            status = f"sw:{remote.bucket} on {mp}"
            assert messages[0] == f"STATUS=mounting {status}\n"
            assert messages[-1] == f"READY=1\nSTATUS=mounted {status}\n"
            assert all(m.startswith("STATUS=") for m in messages[:-1])
            assert daemon_pid(mp) == proc.pid  # the main process: NotifyAccess=main works

            done = run(BUCKETFS, "umount", "--if-mounted", "--config", str(conf), env=env)
            assert done.returncode == 0, done
            assert proc.wait(timeout=10) == 0
            later = []
            with contextlib.suppress(TimeoutError):
                listener.settimeout(0.5)
                while True:
                    later.append(listener.recv(4096).decode())
            assert later[-1] == f"STOPPING=1\nSTATUS=unmounted {status}\n"
            assert all("READY=1" not in m for m in later)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        stderr.seek(0)
        log = stderr.read()
    assert f"INFO bucketfs.app.mount: mounted sw:{remote.bucket} on {mp}" in log
    again = run(BUCKETFS, "umount", "--if-mounted", "--config", str(conf))  # ExecStop after exit
    assert again.returncode == 0, again


# --- secrets, config files --------------------------------------------------------------------


def test_secrets_never_in_cmdline_environment_or_log(
    remote: Remote, mp: Path, tmp_path: Path
) -> None:
    """A DEBUG mount (FUSE debug output included) with keys from the remotes file."""
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [BUCKETFS, "mount", "-f", f"sw:{remote.bucket}", str(mp), "-o", "debug"],
            env=remote.env,
            stderr=log,
            stdout=log,
        )
    try:
        wait_for(lambda: os.path.ismount(mp) or proc.poll() is not None, "the mount")
        assert os.path.ismount(mp), log_path.read_text()
        (mp / "f.txt").write_bytes(b"data")
        assert (mp / "f.txt").read_bytes() == b"data"
        assert os.listdir(mp) == ["f.txt"]
        secrets = [remote.server.secret_key.encode()]
        for what in ("cmdline", "environ"):
            seen = Path(f"/proc/{proc.pid}/{what}").read_bytes()
            assert not any(s in seen for s in secrets), what
        assert run(BUCKETFS, "umount", str(mp)).returncode == 0
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = log_path.read_bytes()
    assert b"DEBUG" in text
    assert b"PUT" in text or b"put" in text  # the log does talk about the requests
    assert not any(s in text for s in secrets)
    assert remote.get("f.txt") == b"data"


def test_refused_credentials_do_not_show(remote: Remote, mp: Path) -> None:
    wrong = remote.file.read_text().replace(remote.server.secret_key, SECRET + "-wrong")
    remote.file.write_text(wrong)
    done = run(BUCKETFS, "mount", f"sw:{remote.bucket}", str(mp), "-o", "debug", env=remote.env)
    assert done.returncode == 1
    assert "denied" in done.stderr or "credentials" in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert not os.path.ismount(mp)


def test_readable_config_with_secrets_is_refused(remote: Remote, mp: Path) -> None:
    remote.file.chmod(0o644)
    done = run(BUCKETFS, "mount", f"sw:{remote.bucket}", str(mp), env=remote.env)
    assert done.returncode == 1
    assert done.stderr == (
        f"bucketfs: {remote.file} holds credentials but other users can read it (mode 0644): "
        f"chmod 600 {remote.file}\n"
    )
    assert not os.path.ismount(mp)


# --- a daemon killed with kill -9 ------------------------------------------------------------


def test_stale_mount_after_kill_9(remote: Remote, mp: Path, tmp_path: Path) -> None:
    """The next mount replaces a stale mount; `bucketfs umount` clears one."""
    source, opts = f"sw:{remote.bucket}", f"cache_dir={tmp_path / 'c'}"
    for attempt in range(2):
        done = run(BUCKETFS, "mount", source, str(mp), "-o", opts, env=remote.env)
        assert done.returncode == 0, done
        if attempt == 0:
            assert done.stderr == ""
            (mp / "kept.txt").write_text("closed before the crash\n")
        else:
            assert done.stderr == (
                f"bucketfs: warning: {mp} is a stale mount (its daemon is gone); "
                "unmounting it first\n"
            )
            assert (mp / "kept.txt").read_text() == "closed before the crash\n"
        os.kill(daemon_pid(mp), signal.SIGKILL)
        wait_for(lambda: is_stale(mp), "ENOTCONN")
        with pytest.raises(OSError, match="Transport endpoint is not connected"):
            os.listdir(mp)
    done = run(BUCKETFS, "umount", str(mp))
    assert done.returncode == 0, done
    assert "was a stale mount" in done.stderr
    assert not os.path.ismount(mp)
    assert not is_stale(mp)
    assert os.listdir(mp) == []


def test_systemd_analyze_catches_mistakes(tmp_path: Path) -> None:
    """The verify test above is worth something: a misspelt key and a missing binary show."""
    text = (UNITS / "bucketfs@.service").read_text().replace("Restart=", "Restrat=")
    text = text.replace("/usr/local/bin/bucketfs", "/nonexistent/bucketfs")
    (tmp_path / "bucketfs@.service").write_text(text)
    done = run("systemd-analyze", "verify", str(tmp_path / "bucketfs@x.service"))
    assert "Unknown key" in done.stderr
    assert "is not executable" in done.stderr  # /usr/local/bin/bucketfs is not installed here
