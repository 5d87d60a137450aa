"""The daemon's malloc settings (`mount.limit_heap_retention`): freed buffers of upload parts,
read in worker threads, go back to the system. Run in a child process: the settings are
process-wide."""

from __future__ import annotations

import subprocess
import sys

from tests.support.helpers import REPO

CHILD = """
import os, threading
from bucketfs.app.mount import limit_heap_retention
limit_heap_retention()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
base = rss()
def work():
    for _ in range(20):
        part = os.urandom(16 << 20)  # a 16 MiB part, read in a worker thread
        del part
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print((rss() - base) // 1024)
"""


def test_freed_part_buffers_are_returned_to_the_system() -> None:
    # without the settings, glibc keeps about 64 MiB here (one 16 MiB block per thread heap)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert int(out.stdout) < 16, f"{out.stdout.strip()} MiB kept after the buffers were freed"


def test_the_daemon_collects_cycles_less_often_but_still_collects_them() -> None:
    """`collect_less_often` (the daemon's GC thresholds): a collection no longer starts every
    700 allocations, and garbage in reference cycles is still freed without being asked."""
    child = """
import gc, weakref
from bucketfs.app.mount import GC_THRESHOLDS, collect_less_often
collect_less_often()
assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
class Cycle:
    pass
first = Cycle()
first.me = first
alive = weakref.ref(first)
del first
junk = [[i] for i in range(50_000)]  # fewer allocations than the youngest threshold
assert alive() is not None
junk += [[i] for i in range(400_000)]  # past it: collected without gc.collect()
print("freed" if alive() is None else "kept")
"""
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "freed"
