"""Stress check for a directory made by this mount going missing (ENOENT) while many small
files are created: the bench's small_files_2000 failed this way in session 13 when the host's
disk was slow. Cause (fixed in session 14, listing.py `Subtrees._empty`): each cache times its
entries from when they went in, so an ancestor's "listed complete" mark outlived the
directory listings stored just before it, and a lookup in that gap took a listed directory
for an empty one. Unit tests: tests/unit/core/test_listing.py.

Usage: .venv/bin/python scripts/repro_enoent.py RUNS, with disk pressure beside it, e.g.
`dd if=/dev/zero of=/tmp/ddpress bs=1M count=30000 oflag=sync` (before the fix: 3 of 6 runs
failed; after it: 0 of 5). Each run mounts s3://rep/itN of a SeaweedFS on loopback with
`-o debug` (log: /tmp/repro/cacheN/bucketfs.log; an ENOENT a listing gave is logged with
which listing and its age), writes 2,000 files small/dNN/sN/fNNNNN round-robin over 40x5
directories (mkdir -p once per directory, as the bench does) and prints ok or the failing
path.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from tests.support.contract import make_s3  # noqa: E402
from tests.support.servers import SeaweedServer  # noqa: E402

WORK = Path("/tmp/repro")


def main(runs: int) -> int:
    server = SeaweedServer().start()
    env = server.env()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()

    async def make_bucket() -> None:
        await make_s3(server).create_bucket("rep")

    trio.run(make_bucket)
    fails = 0
    try:
        for run in range(runs):
            mp = WORK / f"mnt{run}"
            mp.mkdir()
            opts = f"endpoint={server.endpoint},cache_dir={WORK / f'cache{run}'}"
            opts += f",region={server.region},debug"
            cmd = [sys.executable, "-m", "bucketfs", "mount", f"s3://rep/it{run}", str(mp)]
            subprocess.run([*cmd, "-o", opts], env=env, check=True, cwd=REPO)
            rng = random.Random(30)
            made: set[Path] = set()
            t0 = time.perf_counter()
            try:
                for i in range(2000):
                    path = mp / f"small/d{i % 40:02d}/s{(i // 40) % 5}/f{i:05d}"
                    if path.parent not in made:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made.add(path.parent)
                    path.write_bytes(rng.randbytes(rng.randrange(100, 4096)))
                print(run, "ok", round(time.perf_counter() - t0, 2), flush=True)
            except OSError as exc:
                fails += 1
                print(run, "FAIL", exc, flush=True)
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)
            time.sleep(1)
    finally:
        server.stop()
    print("fails", fails)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
