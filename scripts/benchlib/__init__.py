"""The benchmark harness behind `scripts/bench` (see docs/bench.md).

Modules, from the bottom up: `proxy` (a counting HTTP relay between a mount and the server),
`stats` (medians, ratios, the printed table and the JSON document), `data` (deterministic test
data), `store` (the independent client that populates buckets and watches what reached the
server), `systems` (how each filesystem is installed, mounted, measured and unmounted),
`workloads` and `raw` (what is measured, through a mount and straight over S3), `runner` (the
loop, failure recording and cleanup) and `cli` (flags).

Invariant kept by every module: nothing a benchmark creates outlives the run — every mount goes
through `systems.CLEANUP`, which unmounts on normal exit, on exceptions, on SIGINT/SIGTERM and at
interpreter exit.
"""
