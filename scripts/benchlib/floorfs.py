"""The floor of a Python bucket mount for listing rows: pyfuse3 + trio and nothing else.

A read-only S3 mount in one module, built to measure what a cold `ls -lR` (and `find`, `du`,
`stat`) must cost in Python before any design of ours adds to it (issue 16: "before you call
anything a hard bound, isolate it"). It answers the kernel the way bucketfs does, so the kernel
sends it the same requests:

- readdir lists the directory (pages of 1,000, delimiter `/`) and replies with entries whose
  files carry `entry_timeout=0` (a listing cannot tell a file from a symlink), so the kernel
  sends a LOOKUP for each listed file, as it does to bucketfs;
- LOOKUP of a file answers from its HEAD (`--head`, the default: mode, owner and times are
  user metadata, as bucketfs keeps them) or from the listing alone (`--no-head`: the kernel
  side's floor, with no request per file);
- with `--head`, readdir starts the HEADs of the listed files at once, at most `--inflight`
  (32) at a time, and a LOOKUP waits for its own: the prefetch bucketfs and s3fs both do;
- with `--plus`, readdir waits for the HEADs of the files it replies with, so the entries carry
  full attributes and the kernel sends no LOOKUP for them (what session 12 tried in bucketfs);
- GETXATTR answers EOPNOTSUPP, as bucketfs does for names outside `user.*` (`ls -l` asks
  `security.selinux` and `system.posix_acl_access` of every entry until an answer says
  "unsupported", then never again in its run), LISTXATTR nothing.

The requests go through bucketfs's own `S3Backend` (the request path issue 16 measures in the
`requests` workload), so the difference between this and bucketfs on the same row is what
bucketfs's namespace, cache and bookkeeping add, and this alone against s3fs is what Python,
pyfuse3 and trio cost. It keeps everything it was told in dictionaries, forever: fine for a
benchmark of 10,000 files, not a file system.

Usage: floorfs.py BUCKET MOUNTPOINT --endpoint URL [--region R] [--no-head] [--inflight N];
credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Runs in the foreground until
unmounted (`fusermount3 -u MOUNTPOINT`).
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bucketfs.backends.s3.backend import S3Backend, S3Credentials  # noqa: E402
from bucketfs.types import ObjectInfo  # noqa: E402

TIMEOUT = 1.0  # entry and attribute timeouts, bucketfs's defaults


@dataclass(slots=True)
class Entry:
    ino: int
    key: str  # a directory's key ends in "/" (the root's is "")
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    children: dict[str, int] | None = None  # name -> inode, once listed
    head: trio.Event | None = None  # set once the HEAD answered (or failed)
    headed: bool = False
    failed: bool = False
    lookups: int = 0


@dataclass
class Floor(pyfuse3.Operations):
    backend: S3Backend
    bucket: str
    use_head: bool
    inflight: int
    plus: bool = False
    queue: collections.deque[Entry] | None = None
    nursery: trio.Nursery | None = None
    entries: dict[int, Entry] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    workers: list[trio.Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        root = Entry(pyfuse3.ROOT_INODE, "", True, mode=stat.S_IFDIR | 0o755)
        self.entries[root.ino] = root
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.limiter = trio.CapacityLimiter(self.inflight)
        self.queued = trio.Event()

    # --- what the kernel sees -------------------------------------------------------------
    def attrs(self, e: Entry) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = e.ino
        sure = e.is_dir or e.headed or (not self.use_head and e.lookups > 0)
        a.entry_timeout = TIMEOUT if sure else 0
        a.attr_timeout = TIMEOUT if sure else 0
        a.st_mode = e.mode or ((stat.S_IFDIR | 0o755) if e.is_dir else (stat.S_IFREG | 0o644))
        a.st_nlink = 2 if e.is_dir else 1
        a.st_uid = e.uid or os.getuid()
        a.st_gid = e.gid or os.getgid()
        a.st_size = e.size
        a.st_blksize = 1 << 20
        a.st_blocks = (e.size + 511) // 512
        ns = int(e.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a

    def _count(self, op: str) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._count("getattr")
        return self.attrs(self.entries[inode])

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._count("lookup")
        parent = self.entries[parent_inode]
        if parent.children is None:
            await self.list_dir(parent)
        assert parent.children is not None
        ino = parent.children.get(name.decode("utf-8", "surrogateescape"))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e = self.entries[ino]
        if self.use_head and not e.is_dir:
            if e.head is None:
                self.start_head(e)
            assert e.head is not None
            await e.head.wait()
            if e.failed:
                raise pyfuse3.FUSEError(errno.EIO)
        e.lookups += 1
        return self.attrs(e)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._count("opendir")
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self._count("readdir")
        d = self.entries[fh]
        if d.children is None or start_id == 0:
            await self.list_dir(d)
            if self.use_head:
                for ino in d.children.values() if d.children else ():
                    e = self.entries[ino]
                    if not e.is_dir and e.head is None:
                        self.start_head(e)
        assert d.children is not None
        names = list(d.children.items())
        if self.plus:  # full attributes in the reply: the kernel sends no LOOKUP for them
            for _, ino in names[start_id:]:
                if (head := self.entries[ino].head) is not None:
                    await head.wait()
        for i in range(start_id, len(names)):
            name, ino = names[i]
            if not pyfuse3.readdir_reply(
                token, name.encode(), self.attrs(self.entries[ino]), i + 1
            ):
                return

    async def releasedir(self, fh: int) -> None:
        self._count("releasedir")

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._count("getxattr")
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._count("listxattr")
        return []

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self._count("forget")

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = 255
        return s

    # --- what the server is asked -----------------------------------------------------------
    async def list_dir(self, d: Entry) -> None:
        children: dict[str, int] = {}
        old = d.children or {}
        token: str | None = None
        while True:
            page = await self.backend.list_page(self.bucket, d.key, token=token)
            for p in page.prefixes:
                name = p[len(d.key) :].rstrip("/")
                children[name] = old.get(name) or self.new_entry(p, True)
            for o in page.objects:
                name = o.key[len(d.key) :]
                if not name:
                    continue  # the directory's own marker
                ino = old.get(name) or self.new_entry(o.key, False)
                self.listed(self.entries[ino], o)
                children[name] = ino
            token = page.next_token
            if token is None:
                break
        d.children = children

    def new_entry(self, key: str, is_dir: bool) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.entries[ino] = Entry(ino, key, is_dir)
        return ino

    @staticmethod
    def listed(e: Entry, o: ObjectInfo) -> None:
        e.size = o.size
        e.mtime = o.last_modified

    def start_head(self, e: Entry) -> None:
        e.head = trio.Event()
        if self.workers:
            self.waiting[e.key] = e
            self.to_send.append(e.key)
            self.send_wake.set()
            return
        if self.queue is not None:
            self.queue.append(e)
            self.queued.set()
            return
        assert self.nursery is not None
        self.nursery.start_soon(self.head, e)

    async def head_worker(self) -> None:
        """`--queue`: one of `inflight` long-lived tasks taking HEADs from a shared queue (no
        task and no limiter per HEAD)."""
        assert self.queue is not None
        while True:
            if not self.queue:
                await self.queued.wait()
                self.queued = trio.Event()
                continue
            await self.head_now(self.queue.popleft())

    # --- HEADs in worker processes (`--workers N`) -----------------------------------------
    async def start_workers(self, nursery: trio.Nursery, n: int, argv: list[str]) -> None:
        self.waiting: dict[str, Entry] = {}
        self.to_send: list[str] = []
        self.send_wake = trio.Event()
        for _ in range(n):
            proc = await trio.lowlevel.open_process(
                [sys.executable, __file__, *argv, "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self.workers.append(proc)
            assert proc.stdout is not None
            nursery.start_soon(self.receive_results, proc.stdout)
        nursery.start_soon(self.send_batches)

    async def send_batches(self) -> None:
        """All keys asked since the last send, split evenly over the workers."""
        while True:
            await self.send_wake.wait()
            self.send_wake = trio.Event()
            keys, self.to_send = self.to_send, []
            n = len(self.workers)
            for i, proc in enumerate(self.workers):
                assert proc.stdin is not None
                await send_message(proc.stdin, keys[i::n])

    async def receive_results(self, stream: trio.abc.ReceiveStream) -> None:
        messages = Messages(stream)
        while True:
            results = await messages.receive()
            if results is None:
                return
            for key, size, last_modified, meta in results:
                e = self.waiting.pop(key)
                assert e.head is not None
                if size < 0:
                    e.failed = True
                else:
                    apply_head(e, size, last_modified, meta)
                e.head.set()

    async def head(self, e: Entry) -> None:
        async with self.limiter:
            await self.head_now(e)

    async def head_now(self, e: Entry) -> None:
        assert e.head is not None
        try:
            info = await self.backend.head(self.bucket, e.key)
            apply_head(e, info.size, info.last_modified, info.metadata)
        except Exception:
            e.failed = True
        finally:
            e.head.set()


def apply_head(e: Entry, size: int, last_modified: float, meta: Mapping[str, str]) -> None:
    """What a HEAD said: size, and the POSIX keys s3fs, rclone and bucketfs write."""
    e.size = size
    e.mtime = float(meta.get("mtime") or last_modified)
    e.mode = int(meta.get("mode") or 0)
    e.uid = int(meta.get("uid") or 0)
    e.gid = int(meta.get("gid") or 0)
    e.headed = True


async def send_message(stream: trio.abc.SendStream, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    await stream.send_all(len(data).to_bytes(4, "big") + data)


class Messages:
    """Length-prefixed pickles from one stream (the bytes after a message are kept)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    async def receive(self) -> Any:
        """One message, or None at the end of the stream."""
        if not await self._fill(4):
            return None
        end = 4 + int.from_bytes(self.buf[:4], "big")
        if not await self._fill(end):
            return None
        obj = pickle.loads(self.buf[4:end])
        del self.buf[:end]
        return obj


async def work(args: argparse.Namespace) -> None:
    """A worker process: HEADs of the keys it is sent, answered in batches of whatever is done
    by the time the last answer was written."""
    creds = S3Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    backend = S3Backend(args.endpoint, args.region, credentials=creds, path_style=True)
    limiter = trio.CapacityLimiter(args.inflight)
    done: list[tuple[str, int, float, dict[str, str]]] = []
    wake = trio.Event()
    out = trio.lowlevel.FdStream(os.dup(1))
    inp = trio.lowlevel.FdStream(os.dup(0))

    async def head(key: str) -> None:
        nonlocal wake
        try:
            async with limiter:
                info = await backend.head(args.bucket, key)
            done.append((key, info.size, info.last_modified, dict(info.metadata)))
        except Exception:
            done.append((key, -1, 0.0, {}))
        wake.set()

    async def answer() -> None:
        nonlocal wake, done
        while True:
            await wake.wait()
            wake = trio.Event()
            batch, done = done, []
            await send_message(out, batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        messages = Messages(inp)
        while (keys := await messages.receive()) is not None:
            for key in keys:
                nursery.start_soon(head, key)
        nursery.cancel_scope.cancel()
    await backend.aclose()


async def serve(args: argparse.Namespace) -> None:
    creds = S3Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    backend = S3Backend(args.endpoint, args.region, credentials=creds, path_style=True)
    fs = Floor(backend, args.bucket, not args.no_head, args.inflight, args.plus)
    opts = set(pyfuse3.default_options)
    opts |= {"fsname=floorfs", "subtype=floorfs", "noatime", "ro"}
    pyfuse3.init(fs, args.mountpoint, opts)
    try:
        async with trio.open_nursery() as nursery:
            fs.nursery = nursery
            if args.queue:
                fs.queue = collections.deque()
                for _ in range(args.inflight):
                    nursery.start_soon(fs.head_worker)
            if args.workers:
                argv = [args.bucket, args.mountpoint, "--endpoint", args.endpoint]
                argv += ["--region", args.region, "--inflight", str(args.inflight)]
                await fs.start_workers(nursery, args.workers, argv)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=False)
        for proc in fs.workers:
            proc.kill()
        await backend.aclose()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(fs.counts.items()))
        print(f"floorfs: kernel requests: {counts}", file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bucket")
    p.add_argument("mountpoint")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--no-head", action="store_true")
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--plus", action="store_true", help="readdir waits for its files' HEADs")
    p.add_argument("--queue", action="store_true", help="HEADs by long-lived tasks")
    p.add_argument("--workers", type=int, default=0, help="HEADs in N worker processes")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    trio.run(work if args.worker else serve, args)


if __name__ == "__main__":
    main()
