"""The blocking engine under `local.LocalBackend`: the root directory and every request.

Owns `<root>/` as seen by one process: which buckets exist, creating and deleting them, and each
request of the `Backend` protocol as one blocking call, run by `local.py` in a worker thread.
One bucket's index and files are `index.BucketIndex`.

Invariants: a bucket appears atomically (built in `.tmp-<id>/`, renamed into place) and
disappears atomically (renamed to `.trash-<id>/`, then removed); an open `BucketIndex` is used
only while `<bucket>/index.sqlite` is still the file it opened (device and inode), so a bucket
deleted or re-created by another process is noticed at the next request; bodies are read through
an fd opened after reading the row, and the row is read again if the blob vanished meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bucketfs.backends import inprocess as c
from bucketfs.backends.local.index import (
    COPY_CHUNK,
    BucketIndex,
    Row,
    fsync_dir,
    read_exactly,
    write_all,
)
from bucketfs.backends.local.index import connect as _connect
from bucketfs.backends.local.index import loads as _loads
from bucketfs.errors import (
    AlreadyExists,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
)
from bucketfs.types import BucketInfo, ObjectInfo, PutResult, WriteOptions

_STALE_TMP_SECONDS = 3600.0


class LocalStore:
    """All buckets under one root, as opened by this process (blocking calls)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._lock = threading.Lock()
        self._open: dict[str, BucketIndex] = {}
        root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for entry in os.scandir(root):
            if entry.name.startswith(".trash-") or (
                entry.name.startswith(".tmp-") and now - entry.stat().st_mtime > _STALE_TMP_SECONDS
            ):
                shutil.rmtree(entry.path, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            buckets, self._open = list(self._open.values()), {}
        for b in buckets:
            b.close()

    def bucket(self, name: str) -> BucketIndex:
        """The open index of a bucket; BucketNotFound if it does not exist (now)."""
        if not c.valid_bucket_name(name):
            raise BucketNotFound(f"no such bucket {name!r}")
        with self._lock:
            b = self._open.get(name)
            try:
                st = os.stat(f"{self.root}/{name}/index.sqlite")
            except FileNotFoundError:
                if b is not None:
                    del self._open[name]
                    b.close()
                raise BucketNotFound(f"no such bucket {name!r}") from None
            if b is not None and b.identity == (st.st_dev, st.st_ino):
                return b
            if b is not None:  # deleted and created again by another process
                b.close()
            b = self._open[name] = BucketIndex(self.root / name, fsync=self.fsync)
            return b

    # --- buckets ---------------------------------------------------------------------------
    def list_buckets(self) -> list[BucketInfo]:
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if c.valid_bucket_name(entry.name):
                try:
                    b = self.bucket(entry.name)
                    with b.read() as conn:
                        row = conn.execute("SELECT value FROM settings WHERE name = 'created'")
                        created = float(row.fetchone()[0])
                except BucketNotFound:
                    continue
                out.append(BucketInfo(entry.name, created))
        return out

    def create_bucket(self, name: str) -> None:
        if not c.valid_bucket_name(name):
            raise InvalidRequest(f"invalid bucket name {name!r}")
        path = self.root / name
        if path.exists():
            raise AlreadyExists(f"bucket {name!r} exists")
        tmp = self.root / f".tmp-{c.new_id()}"
        try:
            tmp.mkdir()
            (tmp / "blobs").mkdir()
            (tmp / "uploads").mkdir()
            (tmp / "lock").touch()
            _connect(tmp / "index.sqlite", self.fsync).close()
            if self.fsync:
                fsync_dir(tmp)
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise AlreadyExists(f"bucket {name!r} exists") from None
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.fsync:
            fsync_dir(self.root)

    def delete_bucket(self, name: str) -> None:
        b = self.bucket(name)
        trash = self.root / f".trash-{c.new_id()}"
        with b.write() as conn:
            if conn.execute("SELECT 1 FROM versions LIMIT 1").fetchone() is not None:
                raise BucketNotEmpty(f"bucket {name!r} is not empty")
            os.rename(b.path, trash)
        with self._lock:
            if self._open.get(name) is b:
                del self._open[name]
        b.close()
        if self.fsync:
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def usage(self, bucket: str) -> tuple[int, int]:
        """(bytes, objects) of the current objects, for `df`."""
        with self.bucket(bucket).read() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM versions "
                "WHERE is_latest = 1 AND is_delete_marker = 0"
            ).fetchone()
        return int(row[0]), int(row[1])

    def get_versioning(self, bucket: str) -> str:
        with self.bucket(bucket).read() as conn:
            return BucketIndex.versioning_locked(conn)

    def set_versioning(self, bucket: str, enabled: bool) -> None:
        with self.bucket(bucket).write() as conn:
            conn.execute(
                "UPDATE settings SET value = ? WHERE name = 'versioning'",
                ("Enabled" if enabled else "Suspended",),
            )

    # --- reading ---------------------------------------------------------------------------
    def list_page(
        self,
        bucket: str,
        prefix: bytes,
        delimiter: bytes | None,
        token: bytes | None,
        max_keys: int,
    ) -> tuple[list[tuple[bytes, ObjectInfo | None]], bool]:
        b = self.bucket(bucket)
        with b.read() as conn:
            seek = b.seek_live(conn, c.prefix_end(prefix))
            page, truncated = c.keys_page(seek, prefix, delimiter, token, max_keys)
        return [(k, None if r is None else r.info()) for k, r in page], truncated

    def list_versions_page(
        self,
        bucket: str,
        prefix: bytes,
        delimiter: bytes | None,
        key_marker: bytes | None,
        version_marker: str | None,
        max_keys: int,
    ) -> tuple[list[tuple[bytes, ObjectInfo | None]], bool]:
        b = self.bucket(bucket)
        with b.read() as conn:
            seek = b.seek_versions(conn, c.prefix_end(prefix))

            def older(kb: bytes, version_id: str) -> Iterator[tuple[bytes, Row]] | None:
                marker = b.find_locked(conn, kb, version_id)
                return None if marker is None else b.older_versions(conn, kb, marker.seq)

            page, truncated = c.versions_page(
                seek, older, prefix, delimiter, key_marker, version_marker, max_keys
            )
        return [(k, None if r is None else r.info(listing=True)) for k, r in page], truncated

    def head(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        kb = c.encode_key(key)
        with self.bucket(bucket).read() as conn:
            return BucketIndex.live_locked(conn, kb, version_id).info()

    def open_object(
        self, bucket: str, key: str, if_match: str | None, version_id: str | None
    ) -> tuple[Row, int | None]:
        """The object's row and an fd on its blob (None if empty); the caller closes the fd."""
        kb = c.encode_key(key)
        b = self.bucket(bucket)
        for _ in range(10):
            with b.read() as conn:
                row = b.live_locked(conn, kb, version_id)
            if if_match is not None and not c.etag_matches(if_match, row.etag):
                raise PreconditionFailed(f"{key!r} changed")
            if row.blob is None:
                return row, None
            fd = b.open_blob(row.blob)
            if fd is not None:
                return row, fd
            # replaced and its blob removed between our read and the open: read the new row
        raise BackendError(f"blob of {key!r} keeps disappearing in {b.path}")

    def get(
        self,
        bucket: str,
        key: str,
        start: int,
        end: int | None,
        if_match: str | None,
        version_id: str | None,
    ) -> bytes:
        row, fd = self.open_object(bucket, key, if_match, version_id)
        if fd is None:
            return b""
        try:
            lo, hi = c.clip_range(row.size, start, end)
            return read_exactly(fd, lo, hi - lo)
        finally:
            os.close(fd)

    # --- writing ---------------------------------------------------------------------------
    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        opts: WriteOptions | None,
        if_match: str | None,
        if_none_match: bool,
    ) -> PutResult:
        kb = c.encode_key(key)
        fields = c.normalize_opts(opts)
        c.check_put_size(len(data))
        b = self.bucket(bucket)
        etag = c.md5_hex(data)
        blob = b.write_file(b.blobs, data) if data else None
        try:
            with b.write() as conn:
                current = b.find_locked(conn, kb, None)
                if current is not None and current.is_delete_marker:
                    current = None
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"{key!r} exists")
                if if_match is not None:
                    if current is None:
                        raise NotFound(f"no such key {key!r}")
                    if not c.etag_matches(if_match, current.etag):
                        raise PreconditionFailed(f"{key!r} changed")
                vid, freed = b.install_locked(
                    conn, kb, size=len(data), etag=etag, opts=fields, blob=blob
                )
        except BaseException:
            if blob is not None:
                b.unlink_blobs([blob])
            raise
        b.unlink_blobs(freed)
        return PutResult(etag, None if vid == c.NULL_VERSION else vid)

    def copy(
        self,
        bucket: str,
        src_key: str,
        dst_key: str,
        opts: WriteOptions | None,
        src_version_id: str | None,
        if_match: str | None,
    ) -> PutResult:
        """A new row naming the source's blob: no bytes are copied."""
        src, dst = c.encode_key(src_key), c.encode_key(dst_key)
        fields = None if opts is None else c.normalize_opts(opts)
        b = self.bucket(bucket)
        with b.write() as conn:
            row = b.live_locked(conn, src, src_version_id)
            if if_match is not None and not c.etag_matches(if_match, row.etag):
                raise PreconditionFailed(f"{src_key!r} changed")
            c.check_put_size(row.size)
            if fields is None:
                fields = (_loads(row.metadata), row.content_type, _loads(row.system))
            vid, freed = b.install_locked(
                conn, dst, size=row.size, etag=row.etag, opts=fields, blob=row.blob
            )
        b.unlink_blobs(freed)
        return PutResult(row.etag, None if vid == c.NULL_VERSION else vid)

    def delete_many(self, bucket: str, keys: Sequence[str]) -> None:
        kbs = [c.encode_key(k) for k in keys]
        b = self.bucket(bucket)
        freed: list[str] = []
        with b.write() as conn:
            for kb in kbs:
                freed += b.delete_locked(conn, kb)
        b.unlink_blobs(freed)

    # --- multipart -------------------------------------------------------------------------
    def create_multipart(self, bucket: str, key: str, opts: WriteOptions | None) -> str:
        kb = c.encode_key(key)
        fields = c.normalize_opts(opts)
        b = self.bucket(bucket)
        upload_id = c.new_id()
        (b.uploads / upload_id).mkdir()
        with b.write() as conn:
            conn.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?)",
                (upload_id, kb, json.dumps(fields), time.time()),
            )
        return upload_id

    @staticmethod
    def _check_upload_locked(conn: sqlite3.Connection, kb: bytes, upload_id: str) -> str:
        row = conn.execute("SELECT key, opts FROM uploads WHERE upload_id = ?", (upload_id,))
        found = row.fetchone()
        if found is None or bytes(found[0]) != kb:
            raise NotFound(f"no such upload {upload_id!r}")
        return str(found[1])

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        data: bytes,
        source: tuple[str, int, int, str | None, str | None] | None = None,
    ) -> str:
        """Store one part, from `data` or from `source` = (key, start, end, version, if_match)."""
        kb = c.encode_key(key)
        c.check_part_number(part_number)
        b = self.bucket(bucket)
        with b.read() as conn:
            self._check_upload_locked(conn, kb, upload_id)
        directory = b.uploads / upload_id
        if source is None:
            name, etag, size = b.write_file(directory, data), c.md5_hex(data), len(data)
        else:
            name, etag, size = self._copy_part(b, directory, bucket, *source)
        try:
            with b.write() as conn:
                self._check_upload_locked(conn, kb, upload_id)
                old = conn.execute(
                    "SELECT file FROM parts WHERE upload_id = ? AND part_number = ?",
                    (upload_id, part_number),
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                    (upload_id, part_number, etag, size, name),
                )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
            raise
        if old is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / old[0])
        return etag

    def _copy_part(
        self,
        b: BucketIndex,
        directory: Path,
        bucket: str,
        src_key: str,
        start: int,
        end: int,
        version_id: str | None,
        if_match: str | None,
    ) -> tuple[str, str, int]:
        row, src = self.open_object(bucket, src_key, if_match, version_id)
        lo, hi = c.clip_range(row.size, start, end)
        md5 = hashlib.md5(usedforsecurity=False)
        name, fd = b.create_file(directory)
        ok = False
        try:
            pos = lo
            while src is not None and pos < hi:
                chunk = os.pread(src, min(COPY_CHUNK, hi - pos), pos)
                if not chunk:
                    raise BackendError(f"blob of {src_key!r} is shorter than its index says")
                md5.update(chunk)
                write_all(fd, chunk)
                pos += len(chunk)
            ok = True
        finally:
            if src is not None:
                os.close(src)
            b.finish_file(directory, name, fd, ok)
        return name, md5.hexdigest(), hi - lo

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        kb = c.encode_key(key)
        b = self.bucket(bucket)
        if not parts:
            raise InvalidRequest("no parts")
        numbers = [n for n, _ in parts]
        if numbers != sorted(set(numbers)):
            raise InvalidRequest("parts must be listed in ascending order, once each")
        with b.read() as conn:
            fields = json.loads(self._check_upload_locked(conn, kb, upload_id))
            stored = {
                n: (etag, size, file)
                for n, etag, size, file in conn.execute(
                    "SELECT part_number, etag, size, file FROM parts WHERE upload_id = ?",
                    (upload_id,),
                )
            }
        chosen = []
        for number, etag in parts:
            part = stored.get(number)
            if part is None or part[0] != c.strip_etag(etag):
                raise InvalidRequest(f"part {number} not uploaded or ETag differs")
            chosen.append(part)
        directory = b.uploads / upload_id
        size = sum(p[1] for p in chosen)
        blob = self._concatenate(b, [directory / p[2] for p in chosen]) if size else None
        etag = c.multipart_etag([p[0] for p in chosen])
        try:
            with b.write() as conn:
                self._check_upload_locked(conn, kb, upload_id)
                conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
                conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
                vid, freed = b.install_locked(
                    conn, kb, size=size, etag=etag, opts=_fields(fields), blob=blob
                )
        except BaseException:
            if blob is not None:
                b.unlink_blobs([blob])
            raise
        b.unlink_blobs(freed)
        shutil.rmtree(directory, ignore_errors=True)
        return PutResult(etag, None if vid == c.NULL_VERSION else vid)

    @staticmethod
    def _concatenate(b: BucketIndex, sources: list[Path]) -> str:
        name, fd = b.create_file(b.blobs)
        ok = False
        try:
            for path in sources:
                try:
                    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise InvalidRequest("a part was replaced or aborted meanwhile") from None
                try:
                    remaining = os.fstat(src).st_size
                    while remaining > 0:
                        n = os.copy_file_range(src, fd, remaining)
                        if n == 0:
                            break
                        remaining -= n
                finally:
                    os.close(src)
            ok = True
        finally:
            b.finish_file(b.blobs, name, fd, ok)
        return name

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        kb = c.encode_key(key)
        b = self.bucket(bucket)
        with b.write() as conn:
            self._check_upload_locked(conn, kb, upload_id)
            conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        shutil.rmtree(b.uploads / upload_id, ignore_errors=True)


def _fields(stored: Any) -> tuple[dict[str, str], str | None, dict[str, str]]:
    metadata, content_type, system = stored
    return dict(metadata), content_type, dict(system)
