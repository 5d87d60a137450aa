"""Results, medians, ratios, the printed tables and the JSON document. Pure functions only.

A `Result` is one workload run once on one system. Metric names carry their unit and direction:
`*_s` are seconds (lower is better), `mb_s` is MB/s (10^6 bytes a second) and `iops` is
operations a second (higher is better). A ratio is always `system value / bucketfs value`, so for
seconds a ratio above 1 means the other system took longer than bucketfs, and for MB/s or IOPS a
ratio above 1 means it was faster.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REFERENCE = "bucketfs"
JSON_VERSION = 1


@dataclass
class Result:
    system: str
    workload: str
    rep: int
    ok: bool = True
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, Any] | None = None  # CountingProxy Counts.as_json(); None if not counted
    counted_by: str = ""  # "proxy", "client" (raw's own boto3 hooks) or "" (not measured)
    daemon: dict[str, Any] | None = None  # {"pid", "rss_peak_mib", "cpu_s"} of the mount's daemon
    daemon_cpu_s: float | None = None  # the daemon's CPU seconds during this phase (mounts only)
    params: dict[str, Any] = field(default_factory=dict)


def unit_of(metric: str) -> str:
    if metric.endswith("_s") and metric != "mb_s":
        return "s"
    return {"mb_s": "MB/s", "iops": "IOPS"}.get(metric, "")


def metric_label(metric: str) -> str:
    """`close_s` -> `close [s]`, `mb_s` -> `MB/s`."""
    unit = unit_of(metric)
    return f"{metric.removesuffix('_s')} [s]" if unit == "s" else unit or metric


def higher_is_better(metric: str) -> bool:
    return metric in ("mb_s", "iops")


def median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return statistics.median(vals) if vals else None


def summarize(results: Sequence[Result]) -> dict[str, dict[str, dict[str, Any]]]:
    """{system: {workload: {"ok", "failed", "metrics": {metric: median}, "errors", ...}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.system, r.workload), []).append(r)
    for (system, workload), runs in groups.items():
        good = [r for r in runs if r.ok]
        names = sorted({m for r in good for m in r.metrics})
        totals = [r.counts["requests_total"] for r in good if r.counts is not None]
        entry: dict[str, Any] = {
            "ok": len(good),
            "failed": len(runs) - len(good),
            "metrics": {m: median(r.metrics[m] for r in good if m in r.metrics) for m in names},
            "requests_total": median(totals),
            "bytes_up": median(r.counts["bytes_up"] for r in good if r.counts is not None),
            "bytes_down": median(r.counts["bytes_down"] for r in good if r.counts is not None),
            "daemon_cpu_s": median(r.daemon_cpu_s for r in good if r.daemon_cpu_s is not None),
            "errors": [r.error for r in runs if not r.ok],
        }
        out.setdefault(system, {})[workload] = entry
    return out


def daemon_totals(results: Sequence[Result]) -> dict[str, dict[str, float | None]]:
    """Per system: peak RSS over the whole run, and CPU seconds over all its mounts per rep."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    reps: dict[str, set[int]] = {}
    for r in results:
        reps.setdefault(r.system, set()).add(r.rep)
        if r.daemon and r.daemon.get("pid") is not None:
            # one mount may serve several results (cold + warm): count it once
            seen[(r.system, int(r.daemon["mount_id"]))] = r.daemon
    out: dict[str, dict[str, float | None]] = {}
    for system, nreps in reps.items():
        mounts = [d for (s, _), d in seen.items() if s == system]
        rss = [d["rss_peak_mib"] for d in mounts if d.get("rss_peak_mib") is not None]
        cpu = [d["cpu_s"] for d in mounts if d.get("cpu_s") is not None]
        out[system] = {
            "rss_peak_mib": max(rss) if rss else None,
            "cpu_s_per_rep": sum(cpu) / len(nreps) if cpu else None,
            "mounts": len(mounts),
        }
    return out


def fmt_value(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def fmt_cell(value: float | None, ref: float | None, *, is_reference: bool) -> str:
    text = fmt_value(value)
    if is_reference or value is None:
        return text
    r = ratio(value, ref)
    return f"{text} ({r:.2f}x)" if r is not None else text


def _status_cell(status: str, entry: dict[str, Any] | None, metric: str) -> str | None:
    """Text for cells that hold no number: not installed, not run, failed."""
    if status != "ok":
        return status
    if entry is None:
        return "-"
    if entry["ok"] == 0:
        return "FAILED"
    if metric not in entry["metrics"]:
        return "-"
    return None


def render_table(
    rows: Sequence[tuple[str, str]],
    systems: Sequence[str],
    status: dict[str, str],
    summary: dict[str, dict[str, dict[str, Any]]],
) -> str:
    """Medians with ratios to bucketfs; one row per (workload, metric), one column per system."""
    header = ["workload", "metric", *systems]
    body: list[list[str]] = []
    for workload, metric in rows:
        ref_entry = summary.get(REFERENCE, {}).get(workload)
        ref = ref_entry["metrics"].get(metric) if ref_entry and ref_entry["ok"] else None
        line = [workload, metric_label(metric)]
        for system in systems:
            entry = summary.get(system, {}).get(workload)
            cell = _status_cell(status.get(system, "ok"), entry, metric)
            if cell is None:
                assert entry is not None
                cell = fmt_cell(entry["metrics"][metric], ref, is_reference=system == REFERENCE)
                if entry["failed"]:
                    cell += f" [{entry['failed']} failed]"
            line.append(cell)
        body.append(line)
    return _grid(header, body)


def render_traffic(
    workloads: Sequence[str],
    systems: Sequence[str],
    status: dict[str, str],
    summary: dict[str, dict[str, dict[str, Any]]],
) -> str:
    """S3 requests (with the ratio to bucketfs's) and MiB up/down (medians) per workload."""
    header = ["workload", *systems]
    body: list[list[str]] = []
    for workload in workloads:
        ref_entry = summary.get(REFERENCE, {}).get(workload)
        ref = ref_entry["requests_total"] if ref_entry else None
        line = [workload]
        for system in systems:
            entry = summary.get(system, {}).get(workload)
            if status.get(system, "ok") != "ok":
                line.append(status[system])
            elif entry is None or entry["requests_total"] is None:
                line.append("-")
            else:
                up = entry["bytes_up"] / 2**20
                down = entry["bytes_down"] / 2**20
                total = entry["requests_total"]
                r = None if system == REFERENCE else ratio(total, ref)
                times = f" ({r:.2f}x)" if r is not None else ""
                line.append(f"{total:.0f} req{times} {fmt_value(up)}/{fmt_value(down)}")
        body.append(line)
    return _grid(header, body)


def render_cpu(
    workloads: Sequence[str],
    systems: Sequence[str],
    status: dict[str, str],
    summary: dict[str, dict[str, dict[str, Any]]],
) -> str:
    """The daemon's CPU seconds during each result (medians), with ratios to bucketfs."""
    header = ["workload", *systems]
    body: list[list[str]] = []
    for workload in workloads:
        ref_entry = summary.get(REFERENCE, {}).get(workload)
        ref = ref_entry.get("daemon_cpu_s") if ref_entry else None
        line = [workload]
        for system in systems:
            entry = summary.get(system, {}).get(workload)
            if status.get(system, "ok") != "ok":
                line.append(status[system])
            elif entry is None or entry.get("daemon_cpu_s") is None:
                line.append("-")
            else:
                value = entry["daemon_cpu_s"]
                line.append(fmt_cell(value, ref, is_reference=system == REFERENCE))
        body.append(line)
    return _grid(header, body)


def render_daemons(
    systems: Sequence[str], status: dict[str, str], totals: dict[str, dict[str, float | None]]
) -> str:
    header = ["daemon", *systems]
    rss = ["peak RSS [MiB]"]
    cpu = ["CPU s per rep"]
    for system in systems:
        t = totals.get(system, {})
        if status.get(system, "ok") != "ok":
            rss.append(status[system])
            cpu.append(status[system])
            continue
        rss.append(fmt_value(t.get("rss_peak_mib")))
        cpu.append(fmt_value(t.get("cpu_s_per_rep")))
    return _grid(header, [rss, cpu])


def _grid(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def failures(results: Sequence[Result]) -> list[str]:
    return [
        f"{r.system} {r.workload} rep {r.rep}: {r.error}"
        for r in results
        if not r.ok and r.error is not None
    ]


def build_json(
    meta: dict[str, Any],
    systems: dict[str, dict[str, Any]],
    results: Sequence[Result],
) -> dict[str, Any]:
    """The document `--json` writes: meta, systems, every run, medians, daemon totals."""
    return {
        "version": JSON_VERSION,
        "meta": meta,
        "reference": REFERENCE,
        "systems": systems,
        "results": [asdict(r) for r in results],
        "summary": summarize(results),
        "daemons": daemon_totals(results),
    }
