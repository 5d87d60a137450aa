"""The `requests` workload: client CPU per request through the real backends and a bare client.

No filesystem: one trio process sends N requests of one kind (HEAD, a small GET, a small PUT,
one LIST page) with 1, 8 or 32 in flight and divides the CPU time it used (`time.process_time`,
user + system of the whole process, measured around the batch only, after a warm-up that opens
the connections) by N. Wall time is recorded but is not the figure: the server shares the
machine. Each client runs in a child process of its own (`python -m benchlib.reqbench child
...`), so one client's garbage, pools or threads never bill another, and a child can run the
backends of another checkout (`--requests-repo`: its .venv and code) for an A/B.

Clients: `s3` is `bucketfs.backends.s3.backend.S3Backend` (signing, retries, parsing included),
on its lean h11 path for http:// (`s3/pool.py`); `s3-httpcore2` is the same backend with
`Wire.lean = False`, i.e. on httpcore2's pool as before issue 16's lean path (an A/B in one run);
`bare` sends the same requests, signed once beforehand (S3 has no replay protection), through
a bare `AsyncHTTPTransport` of httpx2 (httpx when httpx2 is not installed: older checkouts),
reading each body whole and parsing nothing; `swift` and `bare-swift` do the same against a
Swift server (`tests/support/swift_server.py`, started when available) with `SwiftBackend` and
with an `X-Auth-Token` fetched once.

Invariants: every answer is checked (status, body size, listed names), so a failing request is
an error and never a cheap one; the children print one JSON object per line and nothing else on
stdout; the parent's parsing and table (`parse_lines`, `medians`, `render`) are pure and tested
in tests/unit/scripts/test_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KINDS = ("head", "get", "put", "list")
INFLIGHT = (1, 8, 32)
CLIENTS = ("s3-httpcore2", "s3", "bare", "swift", "bare-swift")
#: what each client is compared with in the table
BARE_OF = {"s3": "bare", "swift": "bare-swift"}
OBJECT_SIZE = 4096
LIST_KEYS = 100
BUCKET = "bench-requests"
SWIFT_SHARE = 0.25
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sample:
    """One measured batch: `requests` requests of `kind` with `inflight` in flight."""

    client: str
    lib: str
    kind: str
    inflight: int
    requests: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6


# --- the parent side: run children, parse, summarise, print ------------------------------------


def parse_lines(text: str) -> list[Sample]:
    """The samples a child printed (one JSON object per line; blank lines ignored)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Sample(**{k: d[k] for k in Sample.__dataclass_fields__}))
    return out


def medians(samples: Iterable[Sample]) -> dict[tuple[str, str, int], float]:
    """Median CPU microseconds per request by (client, kind, in flight)."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for s in samples:
        groups.setdefault((s.client, s.kind, s.inflight), []).append(s.cpu_us)
    return {k: statistics.median(v) for k, v in groups.items()}


def _label(client: str, samples: Sequence[Sample]) -> str:
    libs = sorted({s.lib for s in samples if s.client == client})
    names = {"s3": "S3Backend", "s3-httpcore2": "S3Backend/httpcore2", "swift": "SwiftBackend"}
    name = names.get(client, client)
    return f"{name} ({'/'.join(libs)})" if client.startswith("bare") and libs else name


def render(samples: Sequence[Sample]) -> str:
    """The table: one row per (kind, in flight); per backend its CPU per request, the bare
    client's, and backend / bare."""
    med = medians(samples)
    present = [c for c in CLIENTS if any(s.client == c for s in samples)]
    columns: list[tuple[str, str | None]] = []  # (client, the bare client it is divided by)
    for client in present:
        bare = BARE_OF.get(client)
        if bare is None and any(BARE_OF.get(c) == client for c in present):
            continue  # a bare client is shown beside its backend
        columns.append((client, None))
        if bare is not None and bare in present:
            columns += [(bare, None), (client, bare)]
    header = ["request", "in flight"] + [
        f"{_label(c, samples)} [us]" if ref is None else "ratio" for c, ref in columns
    ]
    body = []
    for kind in KINDS:
        for inflight in INFLIGHT:
            if not any((c, kind, inflight) in med for c in present):
                continue
            row = [kind.upper(), str(inflight)]
            for client, ref in columns:
                value = med.get((client, kind, inflight))
                if ref is None:
                    row.append("-" if value is None else f"{value:,.0f}")
                else:
                    base = med.get((ref, kind, inflight))
                    row.append("-" if value is None or not base else f"{value / base:.2f}")
            body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Target:
    """Where the children send their requests."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    swift_auth: str | None = None  # a v1 auth URL
    swift_user: str = ""
    swift_key: str = ""


def run_child(
    target: Target,
    client: str,
    *,
    requests: int,
    kinds: Sequence[str] = KINDS,
    inflight: Sequence[int] = INFLIGHT,
    repo: Path = REPO,
) -> list[Sample]:
    """Run one client in a child process with `repo`'s .venv and code (bucketfs imported from
    `repo`, this harness from ours)."""
    python = repo / ".venv" / "bin" / "python"
    env = dict(os.environ, PYTHONPATH=f"{repo}:{REPO / 'scripts'}:{REPO}")
    args = [
        str(python if python.exists() else sys.executable),
        "-m",
        "benchlib.reqbench",
        "child",
        "--client",
        client,
        "--requests",
        str(requests),
        "--kinds",
        ",".join(kinds),
        "--inflight",
        ",".join(map(str, inflight)),
        "--target",
        json.dumps(asdict(target)),
    ]
    # cwd=repo: `python -m` puts the working directory first on sys.path, which would import
    # the parent's checkout of bucketfs instead of `repo`'s
    out = subprocess.run(args, env=env, cwd=repo, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"reqbench child {client} failed: {out.stderr[-2000:]}")
    return parse_lines(out.stdout)


def start_swift() -> tuple[Any, str | None]:
    """A test Swift server, or None and the reason it cannot start here."""
    sys.path.insert(0, str(REPO))
    from tests.support.swift_server import SwiftServer, swift_available

    reason = swift_available()
    if reason is not None:
        return None, reason
    return SwiftServer().start(), None


def run_all(
    target: Target,
    *,
    requests: int,
    reps: int,
    repo: Path = REPO,
    log: Callable[[str], None] = print,
) -> list[Sample]:
    """Every client present, `reps` times each, interleaved (s3-httpcore2, s3, bare, swift,
    bare-swift, s3-httpcore2, ...). The test Swift is one eventlet process (~10 ms a request
    here): its clients send `SWIFT_SHARE` of `requests`."""
    clients = ["s3-httpcore2", "s3", "bare"] + (
        ["swift", "bare-swift"] if target.swift_auth else []
    )
    samples: list[Sample] = []
    for rep in range(reps):
        for client in clients:
            n = max(100, int(requests * SWIFT_SHARE)) if "swift" in client else requests
            got = run_child(target, client, requests=n, repo=repo)
            samples.extend(got)
            text = " ".join(f"{s.kind}/{s.inflight}={s.cpu_us:.0f}" for s in got)
            log(f"[{rep + 1}/{reps}] requests {client:10} us/request: {text}")
    return samples


# --- the child side: one client, every kind and concurrency -------------------------------------


Call = Callable[[], Awaitable[None]]


async def measure(call: Call, requests: int, inflight: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `requests` calls with `inflight` in flight, after a
    warm-up of 2 x `inflight` calls."""
    import trio

    async def batch(n: int) -> None:
        left = [n]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await call()

        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker)

    await batch(2 * inflight)
    cpu, wall = time.process_time(), time.perf_counter()
    await batch(requests)
    return time.process_time() - cpu, time.perf_counter() - wall


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"unexpected answer to {what}")


async def _seed(backend: Any) -> bytes:
    """Put the objects the calls read (one of OBJECT_SIZE, LIST_KEYS to list); the body."""
    body = bytes(range(256)) * (OBJECT_SIZE // 256)
    await backend.put(BUCKET, "obj", body)
    for i in range(LIST_KEYS):
        await backend.put(BUCKET, f"list/k{i:04d}", b"x")
    return body


def _backend_calls(backend: Any, put: Call) -> dict[str, Call]:
    """HEAD, GET and LIST through a bucketfs backend (S3 or Swift), with its own `put`."""

    async def head() -> None:
        _check((await backend.head(BUCKET, "obj")).size == OBJECT_SIZE, "HEAD")

    async def get() -> None:
        _check(len(await backend.get(BUCKET, "obj")) == OBJECT_SIZE, "GET")

    async def list_() -> None:
        page = await backend.list_page(BUCKET, "list/")
        _check(len(page.objects) == LIST_KEYS, "LIST")

    return {"head": head, "get": get, "put": put, "list": list_}


async def _s3_calls(target: Target, client: str) -> tuple[dict[str, Call], str, Any]:
    from bucketfs.backends.s3.backend import S3Backend, S3Credentials

    if client == "s3-httpcore2":
        from bucketfs.backends.s3 import wire

        wire.Wire.lean = False  # an older checkout has no lean path: the same as `s3` there
    creds = S3Credentials(target.access_key, target.secret_key)
    backend = S3Backend(target.endpoint, target.region, credentials=creds, path_style=True)
    from bucketfs.errors import AlreadyExists

    with contextlib.suppress(AlreadyExists):
        await backend.create_bucket(BUCKET)
    body = await _seed(backend)
    if client in ("s3", "s3-httpcore2"):

        async def put() -> None:
            _check(bool((await backend.put(BUCKET, "put", body)).etag), "PUT")

        return _backend_calls(backend, put), "", backend
    await backend.aclose()
    return await _bare_s3(target, body)


def _bare_lib() -> tuple[Any, str]:
    try:
        import httpx2

        return httpx2, "httpx2"
    except ImportError:
        import httpx

        return httpx, "httpx"


async def _bare_s3(target: Target, body: bytes) -> tuple[dict[str, Call], str, Any]:
    import hashlib

    from bucketfs.backends.s3 import sigv4

    lib, name = _bare_lib()
    transport = lib.AsyncHTTPTransport(
        limits=lib.Limits(max_connections=32, max_keepalive_connections=32)
    )
    host = target.endpoint.split("://", 1)[1].rstrip("/")

    def signed(method: str, path: str, query: str, payload: bytes) -> Any:
        headers = sigv4.sign(
            method,
            host,
            path,
            query,
            {},
            hashlib.sha256(payload).hexdigest(),
            access_key=target.access_key,
            secret_key=target.secret_key,
            session_token=None,
            region=target.region,
        )
        url = f"{target.endpoint}{path}" + (f"?{query}" if query else "")
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def call() -> bytes:
            request = lib.Request(method, url, headers=raw, content=payload)
            response = await transport.handle_async_request(request)
            try:
                content = b"".join([c async for c in response.aiter_raw()])
            finally:
                await response.aclose()
            _check(response.status_code == 200, method)
            return content

        return call

    head_, get_ = (
        signed("HEAD", f"/{BUCKET}/obj", "", b""),
        signed("GET", f"/{BUCKET}/obj", "", b""),
    )
    put_ = signed("PUT", f"/{BUCKET}/put", "", body)
    query = "delimiter=%2F&encoding-type=url&list-type=2&max-keys=1000&prefix=list%2F"
    list_ = signed("GET", f"/{BUCKET}", query, b"")

    async def head() -> None:
        await head_()

    async def get() -> None:
        _check(len(await get_()) == OBJECT_SIZE, "GET")

    async def put() -> None:
        await put_()

    async def lst() -> None:
        _check((await list_()).count(b"<Key>") == LIST_KEYS, "LIST")

    return {"head": head, "get": get, "put": put, "list": lst}, name, transport


async def _swift_calls(target: Target, client: str) -> tuple[dict[str, Call], str, Any]:
    from bucketfs.backends.swift.auth import V1Auth
    from bucketfs.backends.swift.backend import SwiftBackend

    assert target.swift_auth is not None
    backend = SwiftBackend(V1Auth(target.swift_auth, target.swift_user, target.swift_key))
    await backend.create_bucket(BUCKET)
    body = await _seed(backend)
    if client == "swift":
        puts = iter(range(1 << 62))

        async def put() -> None:
            # Swift answers 202 without an ETag when two PUTs of one name share a timestamp
            await backend.put(BUCKET, f"put/{next(puts) % 256}", body)

        return _backend_calls(backend, put), "", backend
    session = await backend._current_session()
    await backend.aclose()
    lib, name = _bare_lib()
    transport = lib.AsyncHTTPTransport(
        limits=lib.Limits(max_connections=32, max_keepalive_connections=32)
    )
    base = f"{session.storage_url.rstrip('/')}/{BUCKET}"
    token = [(b"X-Auth-Token", session.token.encode()), (b"Accept-Encoding", b"identity")]

    def call(method: str, url: str, payload: bytes) -> Callable[[], Awaitable[bytes]]:
        async def send() -> bytes:
            request = lib.Request(method, url, headers=token, content=payload)
            response = await transport.handle_async_request(request)
            try:
                content = b"".join([c async for c in response.aiter_raw()])
            finally:
                await response.aclose()
            _check(response.status_code in (200, 201, 202, 204), method)
            return content

        return send

    head_, get_ = call("HEAD", f"{base}/obj", b""), call("GET", f"{base}/obj", b"")
    put_ = call("PUT", f"{base}/put", body)
    list_ = call("GET", f"{base}?format=json&prefix=list%2F&delimiter=%2F&limit=1000", b"")

    async def head() -> None:
        await head_()

    async def get() -> None:
        _check(len(await get_()) == OBJECT_SIZE, "GET")

    async def put() -> None:
        await put_()

    async def lst() -> None:
        _check(len(json.loads(await list_())) == LIST_KEYS, "LIST")

    return {"head": head, "get": get, "put": put, "list": lst}, name, transport


async def child(
    target: Target,
    client: str,
    requests: int,
    kinds: Sequence[str],
    inflight: Sequence[int],
    profile: int = 0,
) -> None:
    """Measure and print one sample per kind and concurrency; with `profile` > 0, run each
    batch under cProfile and print its `profile` busiest functions to stderr instead."""
    make = _swift_calls if "swift" in client else _s3_calls
    calls, lib, closer = await make(target, client)
    if not client.startswith("bare"):
        lib = _backend_lib()
    try:
        for kind in kinds:
            for n in inflight:
                if profile:
                    import cProfile
                    import pstats

                    profiler = cProfile.Profile()
                    with profiler:
                        await measure(calls[kind], requests, n)
                    print(f"--- {client} {kind} x{n} (cProfile, by own time)", file=sys.stderr)
                    stats = pstats.Stats(profiler, stream=sys.stderr)
                    stats.sort_stats("tottime").print_stats(profile)
                    continue
                cpu, wall = await measure(calls[kind], requests, n)
                sample = Sample(client, lib, kind, n, requests, cpu, wall)
                print(json.dumps(asdict(sample)), flush=True)
    finally:
        await closer.aclose()


def _backend_lib() -> str:
    """Which HTTP library the imported backends use."""
    return "httpx2" if "httpx2" in sys.modules else "httpx"


def standalone(
    *,
    endpoint: Target | None,
    requests: int,
    reps: int,
    swift: bool,
    repo: Path = REPO,
    log: Callable[[str], None] = print,
) -> tuple[list[Sample], str]:
    """Start SeaweedFS (unless `endpoint` is given) and Swift (when `swift` and available), run
    every client, stop the servers: the samples and a note on Swift."""
    sys.path.insert(0, str(REPO))
    from tests.support.servers import SeaweedServer

    weed = swift_server = None
    note = "Swift: not asked for"
    try:
        if endpoint is None:
            log("requests: starting SeaweedFS on loopback ...")
            weed = SeaweedServer().start()
            target = Target(weed.endpoint, weed.access_key, weed.secret_key, weed.region)
        else:
            target = endpoint
        if target.swift_auth:
            note = "Swift: the given server"
        elif swift:
            log("requests: starting Swift on loopback ...")
            swift_server, reason = start_swift()
            if swift_server is None:
                note = f"Swift: not measured ({reason})"
            else:
                from tests.support.swift_server import KEY, USER

                target.swift_auth, target.swift_user, target.swift_key = (
                    swift_server.auth_url,
                    USER,
                    KEY,
                )
                note = "Swift: the test server (tests/support/swift_server.py) on loopback"
        return run_all(target, requests=requests, reps=reps, repo=repo, log=log), note
    finally:
        if swift_server is not None:
            swift_server.stop()
        if weed is not None:
            weed.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchlib.reqbench")
    p.add_argument("mode", choices=["child", "run"])
    p.add_argument("--client", choices=CLIENTS)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--swift", action="store_true")
    p.add_argument("--requests-repo", type=Path, default=REPO)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--inflight", default=",".join(map(str, INFLIGHT)))
    p.add_argument("--target", help="JSON of a Target")
    p.add_argument(
        "--profile", type=int, default=0, help="child: print the N busiest functions instead"
    )
    args = p.parse_args(argv)
    if args.mode == "run":
        samples, note = standalone(
            endpoint=Target(**json.loads(args.target)) if args.target else None,
            requests=args.requests,
            reps=args.reps,
            swift=args.swift,
            repo=args.requests_repo,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        print(render(samples))
        print(note)
        return 0
    import trio

    trio.run(
        child,
        Target(**json.loads(args.target)),
        args.client,
        args.requests,
        args.kinds.split(","),
        [int(n) for n in args.inflight.split(",")],
        args.profile,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
