"""The pure parts of the benchmark harness (scripts/benchlib): formatting, medians and ratios,
the JSON document's shape, the counting proxy against a real local HTTP server, and the wiring
of `--base-repo` (the system `bucketfs-base`, with a fake checkout: nothing is mounted)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))

from benchlib import cli, reqbench, stats, systems
from benchlib.proxy import CountingProxy, RequestParser, request_kind
from benchlib.runner import ScenarioEnv
from benchlib.stats import Result
from benchlib.workloads import Scenario


def result(system: str, workload: str, rep: int, **metrics: float) -> Result:
    counts = {"requests": {"GET": 2}, "requests_total": 2, "bytes_up": 10, "bytes_down": 2**20}
    return Result(system, workload, rep, metrics=metrics, counts=counts, counted_by="proxy")


# --- formatting and medians ---------------------------------------------------------------------


def test_value_formatting_keeps_about_three_digits() -> None:
    assert stats.fmt_value(None) == "-"
    assert stats.fmt_value(1234.5) == "1,234"
    assert stats.fmt_value(123.4) == "123"
    assert stats.fmt_value(12.34) == "12.3"
    assert stats.fmt_value(1.234) == "1.23"
    assert stats.fmt_value(0.001234) == "0.001"


def test_ratio_is_system_over_bucketfs() -> None:
    assert stats.ratio(3.0, 1.5) == 2.0
    assert stats.ratio(1.0, 0.0) is None
    assert stats.ratio(None, 1.0) is None
    assert stats.fmt_cell(3.0, 1.5, is_reference=False) == "3.00 (2.00x)"
    assert stats.fmt_cell(1.5, 1.5, is_reference=True) == "1.50"


def test_metric_units_and_labels() -> None:
    assert stats.metric_label("close_s") == "close [s]"
    assert stats.metric_label("mb_s") == "MB/s"
    assert stats.metric_label("iops") == "IOPS"
    assert stats.higher_is_better("mb_s")
    assert not stats.higher_is_better("server_s")


def test_summary_takes_medians_of_successful_runs_only() -> None:
    runs = [result("bucketfs", "stat_1000", i, time_s=t) for i, t in enumerate([3.0, 1.0, 2.0])]
    failed = Result("bucketfs", "stat_1000", 3, ok=False, error="OSError: boom")
    summary = stats.summarize([*runs, failed])
    entry = summary["bucketfs"]["stat_1000"]
    assert entry["metrics"] == {"time_s": 2.0}
    assert (entry["ok"], entry["failed"], entry["errors"]) == (3, 1, ["OSError: boom"])
    assert entry["requests_total"] == 2


def test_table_shows_ratios_failures_and_missing_systems() -> None:
    results = [
        result("bucketfs", "read_1g_cold", 0, mb_s=500.0),
        result("s3fs", "read_1g_cold", 0, mb_s=1000.0),
        Result("rclone-full", "read_1g_cold", 0, ok=False, error="EIO"),
    ]
    systems = ["bucketfs", "rclone-full", "s3fs", "rclone-off"]
    status = {"bucketfs": "ok", "rclone-full": "ok", "s3fs": "ok", "rclone-off": "not installed"}
    table = stats.render_table(
        [("read_1g_cold", "mb_s")], systems, status, stats.summarize(results)
    )
    header, rule, row = table.splitlines()
    assert header.split() == ["workload", "metric", *systems]
    assert set(rule) <= {"-", " "}
    assert row.split(maxsplit=2)[:2] == ["read_1g_cold", "MB/s"]
    assert "500" in row
    assert "1,000 (2.00x)" in row
    assert "FAILED" in row
    assert row.endswith("not installed")


def test_traffic_table_gives_requests_and_mib() -> None:
    summary = stats.summarize([result("bucketfs", "tar_c", 0, time_s=1.0)])
    status = {"s3fs": "not installed"}
    table = stats.render_traffic(["tar_c"], ["bucketfs", "s3fs"], status, summary)
    row = table.splitlines()[2]
    assert row.split(maxsplit=1)[1] == "2 req 0.000/1.00  not installed"


def test_daemon_totals_count_each_mount_once() -> None:
    a = result("bucketfs", "read_1g_cold", 0, mb_s=1.0)
    b = result("bucketfs", "read_1g_warm", 0, mb_s=2.0)
    c = result("bucketfs", "stat_1000", 0, time_s=1.0)
    a.daemon = b.daemon = {"pid": 7, "mount_id": 1, "rss_peak_mib": 80.0, "cpu_s": 2.0}
    c.daemon = {"pid": 8, "mount_id": 2, "rss_peak_mib": 120.0, "cpu_s": 1.0}
    totals = stats.daemon_totals([a, b, c])["bucketfs"]
    assert totals == {"rss_peak_mib": 120.0, "cpu_s_per_rep": 3.0, "mounts": 2}


def test_json_document_shape() -> None:
    results = [
        result("bucketfs", "write_1g", 0, close_s=1.0, server_s=2.0, mb_s=500.0),
        Result("raw", "write_1g", 0, ok=False, error="TimeoutError: slow"),
    ]
    doc = stats.build_json(
        {"quick": True}, {"bucketfs": {"status": "ok"}, "raw": {"status": "ok"}}, results
    )
    doc = json.loads(json.dumps(doc))  # everything is plain JSON
    assert doc["version"] == stats.JSON_VERSION
    assert doc["reference"] == "bucketfs"
    assert set(doc) == {"version", "meta", "reference", "systems", "results", "summary", "daemons"}
    first = doc["results"][0]
    assert {"system", "workload", "rep", "ok", "error", "metrics", "counts", "daemon"} <= set(first)
    assert first["counts"]["requests"] == {"GET": 2}
    assert doc["summary"]["bucketfs"]["write_1g"]["metrics"]["server_s"] == 2.0
    assert doc["summary"]["raw"]["write_1g"]["failed"] == 1


# --- the request parser and the counting proxy ----------------------------------------------------


def test_parser_finds_requests_split_anywhere() -> None:
    seen: list[str] = []
    body: dict[str, int] = {}

    def on_body(method: str, n: int) -> None:
        body[method] = body.get(method, 0) + n

    stream = (
        b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /b/k?uploads HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: 1\r\n\r\n"
        b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    parser = RequestParser(seen.append, on_body)
    for i in range(len(stream)):  # worst case: one byte at a time
        parser.feed(stream[i : i + 1])
    assert seen == ["PUT", "POST", "GET"]
    assert body == {"PUT": 5, "POST": 7}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, payload: bytes, *, head: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self._reply(b"x" * int(self.path.strip("/") or 0))

    def do_HEAD(self) -> None:
        self._reply(b"x" * 10, head=True)

    def do_PUT(self) -> None:
        self._reply(hashlib.md5(self._body()).hexdigest().encode())

    do_POST = do_PUT


@pytest.fixture
def origin() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("splice", [True, False])
def test_proxy_forwards_and_counts(origin: ThreadingHTTPServer, splice: bool) -> None:
    proxy = CountingProxy("127.0.0.1", origin.server_address[1], splice=splice).start()
    try:
        port = int(proxy.endpoint.rsplit(":", 1)[1])
        before = proxy.snapshot()
        big = bytes(range(256)) * 16384  # 4 MiB: the body goes the splice way when it can
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("PUT", "/k", body=big)
            assert conn.getresponse().read() == hashlib.md5(big).hexdigest().encode()
            conn.request("GET", "/3000000")  # same connection: keep-alive
            assert len(conn.getresponse().read()) == 3_000_000
            conn.request("HEAD", "/k")
            head = conn.getresponse()
            assert head.getheader("Content-Length") == "10"
            assert head.read() == b""
            conn.request("POST", "/k", body=iter([b"ab", b"cde"]), encode_chunked=True)
            assert conn.getresponse().read() == hashlib.md5(b"abcde").hexdigest().encode()
        finally:
            conn.close()
        after = proxy.snapshot()
        counts = after.minus(before)
        assert counts.requests == {"PUT": 1, "GET": 1, "HEAD": 1, "POST": 1}
        assert counts.body_up == {"PUT": len(big), "POST": 5}
        assert len(big) < counts.bytes_up < len(big) + 2000
        assert 3_000_000 < counts.bytes_down < 3_000_000 + 2000
        assert counts.connections == 1
        assert counts.parse_errors == 0
        assert counts.as_json()["requests_total"] == 4
    finally:
        proxy.close()


# --- the requests workload (client CPU per request) ----------------------------------------------


def _sample_line(client: str, lib: str, kind: str, inflight: int, cpu_s: float) -> str:
    sample = {"client": client, "lib": lib, "kind": kind, "inflight": inflight}
    return json.dumps({**sample, "requests": 1000, "cpu_s": cpu_s, "wall_s": 9.9, "extra": 1})


def test_requests_child_output_parses_into_samples() -> None:
    text = "\n".join(
        [
            _sample_line("s3", "httpx2", "head", 32, 0.3),
            "",
            _sample_line("bare", "httpx2", "get", 1, 0.25),
        ]
    )
    first, second = reqbench.parse_lines(text + "\n")
    assert (first.client, first.kind, first.inflight, first.requests) == ("s3", "head", 32, 1000)
    assert first.cpu_us == pytest.approx(300.0)
    assert (second.client, second.lib, second.cpu_us) == ("bare", "httpx2", pytest.approx(250.0))


def test_requests_medians_are_per_client_kind_and_concurrency() -> None:
    lines = [_sample_line("s3", "httpx2", "head", 8, t) for t in (0.5, 0.3, 0.4)]
    lines.append(_sample_line("s3", "httpx2", "head", 32, 0.9))
    medians = reqbench.medians(reqbench.parse_lines("\n".join(lines)))
    assert medians == {
        ("s3", "head", 8): pytest.approx(400.0),
        ("s3", "head", 32): pytest.approx(900.0),
    }


def test_requests_table_puts_each_backend_beside_its_bare_client() -> None:
    lines = [
        _sample_line("s3", "httpx2", "head", 1, 0.30),
        _sample_line("bare", "httpx2", "head", 1, 0.25),
        _sample_line("s3", "httpx2", "list", 32, 1.5),
        _sample_line("swift", "httpx2", "head", 1, 0.9),
    ]
    table = reqbench.render(reqbench.parse_lines("\n".join(lines))).splitlines()
    assert table[0].split() == [
        "request", "in", "flight", "S3Backend", "[us]", "bare", "(httpx2)", "[us]", "ratio",
        "SwiftBackend", "[us]",
    ]  # fmt: skip
    assert set(table[1]) == {"-", " "}
    assert table[2].split() == ["HEAD", "1", "300", "250", "1.20", "900"]
    # a row only where something was measured; a missing figure is "-", so is its ratio
    assert table[3].split() == ["LIST", "32", "1,500", "-", "-", "-"]
    assert len(table) == 4


# --- --base-repo: the system bucketfs-base ------------------------------------------------------


@pytest.fixture
def base_reset() -> Iterator[None]:
    yield
    systems.BASE.repo = None
    systems.BASE._checked = None


def fake_checkout(where: Path, *, imports_from: Path | None = None, options: str = "") -> Path:
    """A directory with a bucketfs package and a `.venv/bin/python` that answers the preflight:
    where `import bucketfs` comes from, the version, and `mount --help` naming `options`."""
    (where / "bucketfs").mkdir(parents=True)
    python = where / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    init = (imports_from or where) / "bucketfs" / "__init__.py"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ]; then echo "$PWD|$PYTHONPATH" > "$0.seen"; '
        f"echo {init}; echo 0.0.9; exit 0; fi\n"
        f'echo "options (-o): {options or ", ".join(systems.MOUNT_OPTIONS)}"\n'
    )
    python.chmod(0o755)
    return where


def test_base_system_needs_base_repo_and_comes_right_after_bucketfs(
    tmp_path: Path, base_reset: None
) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--only", "bucketfs,bucketfs-base"])
    with pytest.raises(SystemExit):  # no bucketfs package in DIR
        cli.parse_args(["--base-repo", str(tmp_path)])
    assert "bucketfs-base" not in [s.name for s in cli.select_systems(None, None)]
    repo = fake_checkout(tmp_path / "old")
    args = cli.parse_args(["--base-repo", str(repo), "--only", "raw,bucketfs-base,bucketfs"])
    names = [s.name for s in cli.select_systems(args.only, args.base_repo)]
    assert names == ["bucketfs", "bucketfs-base", "raw"]
    every = [s.name for s in cli.select_systems(None, repo)]
    assert every[:3] == ["bucketfs", "bucketfs-base", "rclone-full"]
    assert systems.BASE.repo == repo.resolve()
    assert "bucketfs-base" not in cli.NO_DAEMON
    assert {"raw", "local"} <= cli.NO_DAEMON


def test_base_system_runs_the_checkouts_python_on_its_code(
    tmp_path: Path, base_reset: None
) -> None:
    base = systems.BucketfsBase()
    assert not base.installed()
    assert base.missing() == "no --base-repo"
    base.repo = tmp_path / "gone"
    assert not base.installed()
    assert base.missing().startswith("no ")
    assert ".venv" in base.missing()
    repo = fake_checkout(tmp_path / "old")
    base.repo = repo
    python = str(repo / ".venv" / "bin" / "python")
    assert base.installed()
    assert base.binary() == python
    assert base.cli() == [python, "-m", "bucketfs"]
    env, cwd = base.run_env(systems.Credentials("AK", "SK", "eu-1"))
    assert (env["PYTHONPATH"], cwd) == (str(repo), repo)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_DEFAULT_REGION"]) == ("AK", "eu-1")
    cmd = base.mount_command("b1", Path("/mp"), "http://127.0.0.1:9", Path("/c"), "eu-1")
    assert cmd == [
        *base.cli(),
        *["mount", "s3://b1", "/mp", "-o", "endpoint=http://127.0.0.1:9,cache_dir=/c,region=eu-1"],
    ]
    assert base.preflight() == "0.0.9"
    assert (repo / ".venv" / "bin" / "python.seen").read_text().strip() == f"{repo}|{repo}"
    # the unmount goes through the same command, environment and directory
    handle = systems.BucketfsHandle(base.name, Path("/mp"), cli=base.cli(), env=env, cwd=cwd)
    assert handle.cli == [python, "-m", "bucketfs"]
    assert handle.cwd == repo


def test_base_preflight_refuses_other_code_and_missing_options(
    tmp_path: Path, base_reset: None
) -> None:
    elsewhere = systems.BucketfsBase(fake_checkout(tmp_path / "a", imports_from=tmp_path / "b"))
    with pytest.raises(RuntimeError, match="imports bucketfs from"):
        elsewhere.preflight()
    old = systems.BucketfsBase(fake_checkout(tmp_path / "c", options="endpoint, region"))
    with pytest.raises(RuntimeError, match="cache_dir"):
        old.preflight()


def test_cpu_table_and_request_ratios_compare_with_bucketfs() -> None:
    a = result("bucketfs", "tar_c", 0, time_s=1.0)
    b = result("bucketfs-base", "tar_c", 0, time_s=2.0)
    a.daemon_cpu_s, b.daemon_cpu_s = 0.5, 1.5
    b.counts = dict(b.counts or {}, requests_total=6)
    summary = stats.summarize([a, b, result("s3fs", "tar_c", 0, time_s=1.0)])
    assert summary["bucketfs-base"]["tar_c"]["daemon_cpu_s"] == 1.5
    status = {"rclone-full": "not installed"}
    names = ["bucketfs", "bucketfs-base", "s3fs", "rclone-full"]
    row = stats.render_cpu(["tar_c"], names, status, summary).splitlines()[2]
    assert row.split() == ["tar_c", "0.50", "1.50", "(3.00x)", "-", "not", "installed"]
    traffic = stats.render_traffic(["tar_c"], names, status, summary).splitlines()[2]
    assert "2 req 0.000/1.00" in traffic
    assert "6 req (3.00x) 0.000/1.00" in traffic


def test_phase_measures_the_daemons_cpu_during_the_phase() -> None:
    """The daemon here is this very process: the phase burns CPU, the result records it."""
    sizes = types.SimpleNamespace(timeout=30.0)
    bench = types.SimpleNamespace(
        sizes=sizes, quick=True, files=None, raw_client=None, proxy=None, verbose=False
    )
    bench.progress = lambda r: None
    system = systems.Bucketfs()
    scenario = Scenario("tar_c", ("tar_c",), lambda env: None)
    env = ScenarioEnv(bench, system, scenario, 0, None, "b")  # type: ignore[arg-type]
    env.handle = systems.MountHandle("bucketfs", Path("/nowhere"), pid=os.getpid())

    def burn() -> dict[str, float]:
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        return {"time_s": 0.2}

    env.phase("tar_c", burn)
    cpu = env.results["tar_c"].daemon_cpu_s
    assert cpu is not None
    assert 0.1 <= cpu < 5


def test_run_goes_scenario_by_scenario_and_system_by_system(tmp_path: Path) -> None:
    from benchlib.data import QUICK
    from benchlib.runner import Bench

    scenarios = [Scenario(n, (n,), lambda env: None) for n in ("a", "b")]
    two = [systems.Bucketfs(), systems.BucketfsBase(tmp_path)]
    bench = Bench(
        sizes=dataclasses.replace(QUICK, repetitions=2),
        quick=True,
        systems=two,  # type: ignore[arg-type]
        scenarios=scenarios,
        workdir=tmp_path,
        endpoint=None,
        use_proxy=False,
        verbose=False,
    )
    calls: list[tuple[str, str, int]] = []
    bench.run_scenario = lambda sys_, sc, rep: calls.append((sc.name, sys_.name, rep))  # type: ignore[method-assign]
    bench.run()
    assert calls[:4] == [
        ("a", "bucketfs", 0),
        ("a", "bucketfs-base", 0),
        ("b", "bucketfs", 0),
        ("b", "bucketfs-base", 0),
    ]
    assert len(calls) == 8


def test_a_bucketfs_variant_runs_its_rows_only_with_its_options(tmp_path: Path) -> None:
    from benchlib.data import QUICK
    from benchlib.runner import Bench

    listing = systems.BucketfsListing()
    command = listing.mount_command("b", Path("/mp"), "http://s3", Path("/c"), "eu-1")
    assert command[-1].split(",")[-1] == "attrs=listing"
    assert (
        "attrs=listing"
        not in systems.Bucketfs().mount_command("b", Path("/mp"), "http://s3", Path("/c"), "eu-1")[
            -1
        ]
    )
    assert "bucketfs-listing" in [s.name for s in cli.select_systems(None, None)]
    scenarios = [Scenario(n, (n,), lambda env: None) for n in ("ls_lR_10k", "tar_c")]
    bench = Bench(
        sizes=dataclasses.replace(QUICK, repetitions=1),
        quick=True,
        systems=[systems.Bucketfs(), listing],
        scenarios=scenarios,
        workdir=tmp_path,
        endpoint=None,
        use_proxy=False,
        verbose=False,
    )
    calls: list[tuple[str, str]] = []
    bench.run_scenario = lambda sys_, sc, rep: calls.append((sc.name, sys_.name))  # type: ignore[method-assign]
    bench.run()
    assert calls == [
        ("ls_lR_10k", "bucketfs"),
        ("ls_lR_10k", "bucketfs-listing"),
        ("tar_c", "bucketfs"),
    ]


def test_the_early_parts_variant_mounts_with_them_on_for_the_large_write_only() -> None:
    early = systems.BucketfsEarly()
    command = early.mount_command("b", Path("/mp"), "http://s3", Path("/c"), "eu-1")
    assert command[-1].split(",")[-1] == "early_parts=on"
    assert early.scenarios == frozenset({"write_1g"})
    assert "bucketfs-early" in [s.name for s in cli.select_systems(None, None)]


def test_request_kind_tells_a_listing_from_a_get() -> None:
    assert request_kind("GET", "GET /b?list-type=2&prefix=d%2F&delimiter=%2F HTTP/1.1") == "LIST"
    assert request_kind("GET", "GET /v1/AUTH_t/c?format=json&prefix=d%2F HTTP/1.1") == "LIST"
    assert request_kind("GET", "GET /b/k HTTP/1.1") == "GET"
    assert request_kind("GET", "GET /b/k?versionId=3 HTTP/1.1") == "GET"
    assert request_kind("HEAD", "HEAD /b/k HTTP/1.1") == "HEAD"
