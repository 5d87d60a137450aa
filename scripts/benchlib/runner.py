"""The benchmark loop: server, proxy, buckets, mounts, phases, failures, cleanup.

For each repetition, each selected scenario and each system (in that order, so that one row's
columns are measured close together in time): get the data the scenario needs (a
shared dataset bucket, populated once per system, or a fresh bucket per repetition), mount fresh,
run the phases, unmount, and record one `Result` per phase.

Invariants: a failure anywhere (mount, population, a phase, unmount) becomes a recorded failure
of the results concerned and the loop goes on; a phase that runs past its timeout is abandoned
after the mount under it was aborted (which turns a hung FUSE call into ENOTCONN); the proxy's
counters and the daemon's CPU seconds are read right before and right after each phase, and only
one mount is live at a time, so each phase's counts and CPU are its own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import raw as raw_mod
from .data import Sizes
from .proxy import CountingProxy
from .raw import ClientCounter
from .stats import Result
from .store import LocalStore, S3Store, Store
from .systems import CLEANUP, Credentials, MountHandle, System, is_mounted
from .workloads import DataFiles, Metrics, Scenario, populate_dataset


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 600 else text[:600] + " ..."


class Dropper:
    """`sync; echo 3 > /proc/sys/vm/drop_caches`; remembers whether it ever failed."""

    def __init__(self) -> None:
        self.ok = True

    def __call__(self) -> None:
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as exc:
            if self.ok:
                log(f"bench: cannot drop the page cache ({exc}); 'cold' runs are not cold")
            self.ok = False


def s3_client(endpoint: str, creds: Credentials, pool: int = 32) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        region_name=creds.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3},
            max_pool_connections=pool,
        ),
    )


class ScenarioEnv:
    """What one scenario sees: its store, its mount, and `phase` to measure one result."""

    def __init__(
        self,
        bench: Bench,
        system: System,
        scenario: Scenario,
        rep: int,
        store: Store,
        bucket: str,
    ) -> None:
        self.bench = bench
        self.system = system
        self.sizes: Sizes = bench.sizes
        self.files: DataFiles = bench.files
        self.store = store
        self.bucket = bucket
        self.s3 = bench.raw_client
        self.rep = rep
        self.handle: MountHandle | None = None
        params = {"sizes": "quick" if bench.quick else "full"}
        self.results = {
            name: Result(system.name, name, rep, params=params) for name in scenario.results
        }
        self.done: set[str] = set()

    def mount(self, *, cold: bool) -> Path:
        if self.system.kind == "local":
            assert isinstance(self.store, LocalStore)
            if cold:
                self.bench.drop_caches()
            return self.store.root
        assert self.handle is None, "one mount per scenario"
        self.handle = self.system.mount(
            self.bucket, self.bench.mount_endpoint, self.bench.creds, self.bench.rundir
        )
        if cold:
            self.bench.drop_caches()
        return self.handle.path

    def remount(self) -> Path:
        """Unmount and mount again on the same cache directory (a system without a persistent
        cache gets a fresh mount), then drop the page cache: what a reboot or a restart of the
        mount leaves."""
        if self.system.kind == "local":
            return self.mount(cold=True)
        assert self.handle is not None, "remount without a mount"
        handle, self.handle = self.handle, None
        handle.unmount()
        self.handle = self.system.mount(
            self.bucket,
            self.bench.mount_endpoint,
            self.bench.creds,
            self.bench.rundir,
            handle.cache,
        )
        self.bench.drop_caches()
        return self.handle.path

    def _counts(self) -> tuple[Callable[[], Any], Callable[[Any, Any], dict[str, Any]], str]:
        if self.system.kind == "raw":
            counter = self.bench.raw_counter
            return counter.snapshot, ClientCounter.delta, "client"
        if self.system.kind == "mount" and self.bench.proxy is not None:
            proxy = self.bench.proxy
            return proxy.snapshot, lambda a, b: a.minus(b).as_json(), "proxy"
        return lambda: None, lambda a, b: {}, ""

    def phase(self, name: str, fn: Callable[[], Metrics]) -> None:
        result = self.results[name]
        snapshot, delta, counted_by = self._counts()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["metrics"] = fn()
            except BaseException as exc:
                box["error"] = exc
                box["trace"] = traceback.format_exc()

        handle = self.handle
        cpu_before = handle.stats()["cpu_s"] if handle is not None else None
        before = snapshot()
        worker = threading.Thread(target=target, name=f"phase-{name}", daemon=True)
        worker.start()
        worker.join(self.sizes.timeout + 30)
        if worker.is_alive():
            if self.handle is not None:
                self.handle.abort()  # a hung FUSE call returns ENOTCONN now
                self.handle = None
            worker.join(30)
            box.setdefault("error", TimeoutError(f"{name} ran over {self.sizes.timeout:.0f}s"))
        after = snapshot()
        if handle is not None and self.handle is handle and cpu_before is not None:
            cpu_after = handle.stats()["cpu_s"]
            if cpu_after is not None:
                result.daemon_cpu_s = cpu_after - cpu_before
        if counted_by:
            result.counts = delta(after, before)
            result.counted_by = counted_by
        if "error" in box:
            result.ok, result.error = False, error_text(box["error"])
            if self.bench.verbose:
                log(box.get("trace", ""))
        else:
            result.metrics = {k: float(v) for k, v in box["metrics"].items()}
        self.done.add(name)
        self.bench.progress(result)

    def fail_rest(self, exc: BaseException) -> None:
        """Mark every result not measured yet as failed with `exc`."""
        for name, result in self.results.items():
            if name not in self.done:
                result.ok, result.error = False, error_text(exc)
                self.done.add(name)
                self.bench.progress(result)

    def close(self) -> Result | None:
        """Unmount; attach the daemon's numbers to the results; a failed unmount is a Result."""
        if self.handle is None:
            return None
        handle, self.handle = self.handle, None
        try:
            handle.unmount()
        except Exception as exc:
            failure = Result(self.system.name, f"{next(iter(self.results))}.unmount", self.rep)
            failure.ok, failure.error = False, error_text(exc)
            return failure
        finally:
            stats = handle.final_stats or handle.stats()
            for result in self.results.values():
                result.daemon = stats
        return None


class Bench:
    """One benchmark run. `start()`, then `run()`, and always `stop()`."""

    def __init__(
        self,
        *,
        sizes: Sizes,
        quick: bool,
        systems: list[System],
        scenarios: list[Scenario],
        workdir: Path,
        endpoint: str | None,
        use_proxy: bool,
        verbose: bool,
    ) -> None:
        self.sizes = sizes
        self.quick = quick
        self.systems = systems
        self.scenarios = scenarios
        self.workdir = workdir
        self.external_endpoint = endpoint
        self.use_proxy = use_proxy
        self.verbose = verbose
        self.token = secrets.token_hex(3)
        self.rundir = workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{self.token}"
        self.results: list[Result] = []
        self.drop_caches = Dropper()
        self.server: Any = None
        self.proxy: CountingProxy | None = None
        self.datasets: dict[tuple[str, str], Store] = {}
        self.fresh: list[Store] = []
        self.interrupted = False
        self.raw_counter = ClientCounter()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.rundir.mkdir(parents=True)
        if self.external_endpoint:
            self.endpoint = self.external_endpoint
            self.creds = Credentials(
                os.environ["AWS_ACCESS_KEY_ID"],
                os.environ["AWS_SECRET_ACCESS_KEY"],
                os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
            )
        else:
            from tests.support.servers import SeaweedServer

            log("bench: starting SeaweedFS on loopback ...")
            self.server = SeaweedServer(workdir=self.rundir / "weed").start()
            self.endpoint = self.server.endpoint
            self.creds = Credentials(
                self.server.access_key, self.server.secret_key, self.server.region
            )
        self.mount_endpoint = self.endpoint
        hostport = self.endpoint.removeprefix("http://").rstrip("/")
        if self.use_proxy and (self.endpoint.startswith("https:") or ":" not in hostport):
            log("bench: the counting proxy needs an http://HOST:PORT endpoint; not counting")
            self.use_proxy = False
        if self.use_proxy:
            host, port = hostport.rsplit(":", 1)
            self.proxy = CountingProxy(host, int(port)).start()
            self.mount_endpoint = self.proxy.endpoint
        self.direct = s3_client(self.endpoint, self.creds)
        self.raw_client = s3_client(self.endpoint, self.creds)
        self.raw_counter.attach(self.raw_client)
        log(f"bench: generating data in {self.workdir / 'data'} ...")
        self.files = DataFiles.generate(self.sizes, self.workdir / "data")

    def stop(self) -> None:
        CLEANUP.unmount_all()
        # our own server's data goes with it; on someone else's, leave nothing behind
        if not self.interrupted and self.server is None:
            for store in [*self.fresh, *self.datasets.values()]:
                with contextlib.suppress(Exception):
                    store.destroy()
        if self.proxy is not None:
            self.proxy.close()
        if self.server is not None:
            self.server.stop()
        if not any(is_mounted(p) for p in (self.rundir / "mnt").glob("*")):
            shutil.rmtree(self.rundir, ignore_errors=True)
        else:
            log(f"bench: something is still mounted under {self.rundir}; left it in place")

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        # scenario by scenario, every system in turn: the columns of one row (bucketfs and
        # bucketfs-base above all) are measured minutes apart, not a whole run apart
        for rep in range(self.sizes.repetitions):
            for scenario in self.scenarios:
                for system in self.systems:
                    if system.scenarios is None or scenario.name in system.scenarios:
                        self.run_scenario(system, scenario, rep)

    def _store(self, system: System, label: str) -> Store:
        if system.kind == "local":
            return LocalStore(self.rundir / "local" / f"{label}-{secrets.token_hex(2)}")
        bucket = f"bench-{self.token}-{system.name}-{label}".replace("_", "-").lower()[:63]
        return S3Store(self.direct, bucket)

    def _dataset(self, system: System, name: str) -> Store:
        key = (system.name, name)
        if key not in self.datasets:
            store = self._store(system, name)
            store.create()
            self.datasets[key] = store
            log(f"bench: populating {name} for {system.name} ...")
            populate_dataset(name, store, self.files)
        return self.datasets[key]

    def run_scenario(self, system: System, scenario: Scenario, rep: int) -> None:
        store: Store | None = None
        env: ScenarioEnv | None = None
        try:
            if scenario.dataset is not None:
                store = self._dataset(system, scenario.dataset)
            else:
                store = self._store(system, f"{scenario.name}-r{rep}")
                store.create()
                self.fresh.append(store)
                if scenario.prepare is not None:
                    scenario.prepare(store, self.files)
            bucket = store.bucket if isinstance(store, S3Store) else ""
            env = ScenarioEnv(self, system, scenario, rep, store, bucket)
            if system.kind == "raw":
                raw_mod.RAW[scenario.name](env)
            else:
                scenario.run(env)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # KeyboardInterrupt (also SIGTERM, SIGHUP)
                self.interrupted = True
                raise
            if env is None:
                env = ScenarioEnv(self, system, scenario, rep, LocalStore(Path("/")), "")
            env.fail_rest(exc)
        finally:
            if env is not None:
                unmount_failure = env.close()
                self.results.extend(r for n, r in env.results.items() if n in env.done)
                # after Ctrl-C a busy mount is expected: it was aborted, nothing to report
                if unmount_failure is not None and not self.interrupted:
                    self.results.append(unmount_failure)
                    self.progress(unmount_failure)
            if store is not None and scenario.dataset is None and not self.interrupted:
                with contextlib.suppress(Exception):
                    store.destroy()
                    self.fresh.remove(store)

    def progress(self, r: Result) -> None:
        if r.ok:
            text = "  ".join(f"{k}={v:.3g}" for k, v in r.metrics.items())
        else:
            text = f"FAILED {r.error}"
        log(f"[{r.rep + 1}/{self.sizes.repetitions}] {r.system:13} {r.workload:18} {text}")

    # --- metadata --------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "endpoint": self.external_endpoint or "own SeaweedFS on loopback",
            "server": _weed_version() if self.server is not None else "",
            "proxy": self.proxy is not None,
            "caches_dropped": self.drop_caches.ok,
            "interrupted": self.interrupted,
            "machine": machine(),
        }


def _weed_version() -> str:
    from tests.support.servers import weed_binary

    with contextlib.suppress(Exception):
        out = subprocess.run([weed_binary(), "version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[-1]
    return ""


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }
