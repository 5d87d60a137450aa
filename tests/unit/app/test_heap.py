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
