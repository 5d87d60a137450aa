"""A real single-node OpenStack Swift on loopback for the tests (PyPI `swift` + Debian memcached).

Owns starting and stopping it: memcached, the account, container and object servers and the
proxy, each its own process on a free 127.0.0.1 port, all reading their configuration from one
temporary directory (`swift_dir`), never from /etc/swift. Invariants:

- the rings (one replica, one device, one region/zone) are built once per `start()` (one test
  session), in a child process, so this process never imports swift or eventlet;
- devices live on tmpfs (/dev/shm) when it takes user xattrs: Swift keeps object metadata in
  xattrs and ext4 limits them to about 3 KB per object, less than Swift's 4 KB
  (`max_meta_overall_size`); elsewhere a plain temporary directory is used;
- servers run with `workers = 0` (one process each), `mount_check = false`; the proxy with
  `error_suppression_interval = 0` (else one 507 or timeout blocks the only node for 60 s);
- `stop()` kills every process group it started, even after a failed start.

Accounts: tempauth `test:tester` / `testing` (admin of AUTH_test) and `test2:tester2` /
`testing2` (admin of AUTH_test2, for permission tests). The same pairs are S3 access key /
secret for the s3api middleware.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import free_port

USER = "test:tester"
KEY = "testing"
ACCOUNT = "AUTH_test"
USER2 = "test2:tester2"
KEY2 = "testing2"

PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl "
    "s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server"
)

_RING_SCRIPT = """
import json, sys
from swift.common.ring import RingBuilder
conf_dir, ports = sys.argv[1], json.loads(sys.argv[2])
for kind, port in ports.items():
    builder = RingBuilder(4, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                     "replication_ip": "127.0.0.1", "replication_port": port,
                     "device": "d1", "weight": 100.0})
    builder.rebalance()
    builder.get_ring().save(f"{conf_dir}/{kind}.ring.gz")
"""


def _tmpfs_root() -> str | None:
    """/dev/shm when it exists and takes a 4 KB user xattr (Linux 6.6+), else None."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return None
    probe = tempfile.mkdtemp(prefix="bucketfs-xattr-", dir=shm)
    try:
        os.setxattr(probe, "user.probe", b"x" * 4096)
        return str(shm)
    except OSError:
        return None
    finally:
        os.rmdir(probe)


def memcached_binary() -> str | None:
    return shutil.which("memcached") or (
        "/usr/bin/memcached" if os.path.exists("/usr/bin/memcached") else None
    )


def swift_available() -> str | None:
    """None when Swift can be started here, else the reason it cannot (swift itself is not
    imported: it changes the warning filters of the importing process)."""
    try:
        importlib.metadata.distribution("swift")
    except importlib.metadata.PackageNotFoundError:
        return "PyPI 'swift' is not installed (pip install -e '.[test]')"
    if memcached_binary() is None:
        return "memcached is not installed (apt-get install memcached; see scripts/setup)"
    return None


@dataclass
class SwiftServer:
    """memcached + account/container/object servers + proxy, on loopback."""

    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="bucketfs-swift-", dir=_tmpfs_root()))
    )
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    user: str = USER
    key: str = KEY
    token_life: int = 86400

    @property
    def endpoint(self) -> str:
        """The proxy: Swift API under /v1, tempauth under /auth, S3 (s3api) at the root."""
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def auth_url(self) -> str:
        return f"{self.endpoint}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        return f"{self.endpoint}/v1/{ACCOUNT}"

    @property
    def conf_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def memcache_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ports["memcached"])

    # --- configuration -------------------------------------------------------------------

    def _write_configs(self) -> None:
        conf = self.conf_dir
        devices = self.workdir / "devices"
        (devices / "d1").mkdir(parents=True, exist_ok=True)
        conf.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        (conf / "swift.conf").write_text(
            textwrap.dedent(
                """\
                [swift-hash]
                swift_hash_path_suffix = bucketfs-test-suffix
                swift_hash_path_prefix = bucketfs-test-prefix

                [storage-policy:0]
                name = gold
                default = yes
                """
            )
        )
        common = textwrap.dedent(
            f"""\
            [DEFAULT]
            bind_ip = 127.0.0.1
            workers = 0
            swift_dir = {conf}
            devices = {devices}
            mount_check = false
            disable_fallocate = true
            log_level = WARNING
            log_udp_host = 127.0.0.1
            log_udp_port = {self.ports["syslog"]}
            """
        )
        for kind in ("account", "container", "object"):
            (conf / f"{kind}-server.conf").write_text(
                common
                + f"bind_port = {self.ports[kind]}\n"
                + f"\n[pipeline:main]\npipeline = {kind}-server\n"
                + f"\n[app:{kind}-server]\nuse = egg:swift#{kind}\n"
            )
        filters = {
            "catch_errors": "",
            "gatekeeper": "",
            "healthcheck": "",
            "proxy-logging": "",
            "cache": f"memcache_servers = 127.0.0.1:{self.ports['memcached']}\n",
            "listing_formats": "",
            "bulk": "",
            "tempurl": "allowed_digests = sha256 sha512\n",
            "s3api": "location = us-east-1\ns3_acl = false\n",
            "tempauth": (
                f"user_test_tester = {KEY} .admin\n"
                f"user_test2_tester2 = {KEY2} .admin\n"
                f"token_life = {self.token_life}\n"
            ),
            "copy": "",
            "slo": "",
            "dlo": "",
            "versioned_writes": "allow_object_versioning = true\n",
            "symlink": "",
        }
        eggs = {"cache": "memcache"}
        proxy = common + f"bind_port = {self.ports['proxy']}\n"
        proxy += f"\n[pipeline:main]\npipeline = {PIPELINE}\n"
        proxy += textwrap.dedent(
            """
            [app:proxy-server]
            use = egg:swift#proxy
            account_autocreate = true
            allow_account_management = true
            error_suppression_interval = 0
            node_timeout = 10
            conn_timeout = 2
            """
        )
        for name, extra in filters.items():
            proxy += (
                f"\n[filter:{name}]\nuse = egg:swift#{eggs.get(name, name.replace('-', '_'))}\n"
            )
            proxy += extra
        (conf / "proxy-server.conf").write_text(proxy)

    def _build_rings(self) -> None:
        ports = {k: self.ports[k] for k in ("account", "container", "object")}
        subprocess.run(
            [sys.executable, "-c", _RING_SCRIPT, str(self.conf_dir), json.dumps(ports)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    # --- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, SWIFT_DIR=str(self.conf_dir))
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        log.close()

    def start(self, timeout: float = 60.0) -> SwiftServer:
        for name in ("proxy", "account", "container", "object", "memcached", "syslog"):
            self.ports.setdefault(name, free_port())
        try:
            self._write_configs()
            memcached = memcached_binary()
            if memcached is None:
                raise RuntimeError("memcached not found")
            self._spawn(
                "memcached",
                [memcached, "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0"]
                + ["-m", "64"]
                + (["-u", "nobody"] if os.geteuid() == 0 else []),
            )
            self._build_rings()
            for kind in ("account", "container", "object", "proxy"):
                conf = self.conf_dir / f"{kind}-server.conf"
                self._spawn(
                    kind, [sys.executable, "-m", f"swift.{_module(kind)}.server", str(conf), "-v"]
                )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"swift {name} exited with {proc.returncode}:\n{tail}")

    def _wait_ready(self, timeout: float) -> None:
        """Ready: every server listens, tempauth answers, and a container takes an object."""
        deadline = time.monotonic() + timeout
        for name in ("memcached", "account", "container", "object", "proxy"):
            while True:
                self._check_alive()
                try:
                    with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"swift {name} did not listen in {timeout}s") from None
                    time.sleep(0.05)
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                url, token = self.auth()
                self.request("PUT", f"{url}/bucketfs-ready-probe", token)
                self.request("PUT", f"{url}/bucketfs-ready-probe/probe", token, b"x")
                self.request("DELETE", f"{url}/bucketfs-ready-probe/probe", token)
                self.request("DELETE", f"{url}/bucketfs-ready-probe", token)
                return
            except (OSError, urllib.error.HTTPError) as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"swift did not become ready in {timeout}s: {last!r}")

    # --- a tiny independent client (urllib) ----------------------------------------------

    def auth(self, user: str = USER, key: str = KEY) -> tuple[str, str]:
        """(storage URL, token) from tempauth."""
        req = urllib.request.Request(
            self.auth_url, headers={"X-Auth-User": user, "X-Auth-Key": key}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.headers["X-Storage-Url"], resp.headers["X-Auth-Token"]

    def request(
        self,
        method: str,
        url: str,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One plain HTTP request; raises urllib.error.HTTPError on 4xx/5xx."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["X-Auth-Token"] = token
        req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()

    def flush_tokens(self) -> None:
        """Forget every tempauth token (they live in memcached): the next request gets 401."""
        with socket.create_connection(self.memcache_address, timeout=5) as sock:
            sock.sendall(b"flush_all\r\n")
            assert sock.recv(64).startswith(b"OK")

    def env(self) -> dict[str, str]:
        """Environment for a bucketfs process (or the `swift` CLI) that talks to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_"))}
        env.update(ST_AUTH=self.auth_url, ST_USER=self.user, ST_KEY=self.key)
        return env

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _module(kind: str) -> str:
    return {"account": "account", "container": "container", "object": "obj", "proxy": "proxy"}[kind]


if (
    __name__ == "__main__"
):  # manual use: python -m tests.support.swift_server (stop: Ctrl-C or SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    server = SwiftServer().start()
    print(f"swift ready in {time.monotonic() - started:.1f}s at {server.auth_url}", flush=True)
    print(f"workdir {server.workdir}; ST_AUTH={server.auth_url} ST_USER={USER} ST_KEY={KEY}")
    try:
        signal.pause()
    finally:
        server.stop()
