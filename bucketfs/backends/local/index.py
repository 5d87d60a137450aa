"""One bucket directory of the local store: its SQLite index, blob files and leftovers sweep.

Owns `<root>/<bucket>/` as opened by one process; see `local.py` and docs/local-backend.md for the
layout and the reasons for it. Every method here blocks and is called from a worker thread.

Invariants:
- a blob file is written completely (and fsynced, with its directory, when `fsync`) before any
  index row names it, and is never modified afterwards; it is unlinked only after the
  transaction that removed the last row naming it has committed;
- every change of an object is one `BEGIN IMMEDIATE` transaction, which is also where its
  preconditions are checked, so two writers (threads or processes) never interleave;
- a blob no row names is garbage: left by a crash between writing it and committing. It is swept
  when a process opens a bucket that no other process has open (an exclusive `flock` on
  `<bucket>/lock`; every open holds a shared one), so a write in flight is never swept;
- per key at most one row has `is_latest = 1`, and at most one has version id "null";
- methods ending in `_locked` take a connection inside a transaction from `read()`/`write()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bucketfs.backends import inprocess as c
from bucketfs.errors import BackendError, BucketNotFound, NotFound
from bucketfs.types import EMPTY, ObjectInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE versions (
    seq INTEGER PRIMARY KEY,            -- larger is newer
    key BLOB NOT NULL,                  -- UTF-8; BLOB so that comparisons are memcmp
    version_id TEXT NOT NULL,           -- 'null' when written with versioning not enabled
    is_latest INTEGER NOT NULL,
    is_delete_marker INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,             -- JSON object of user metadata
    system TEXT NOT NULL,               -- JSON object of the other system headers
    blob TEXT                           -- file name in blobs/, NULL when empty or a marker
);
CREATE UNIQUE INDEX versions_latest ON versions(key) WHERE is_latest = 1;
CREATE UNIQUE INDEX versions_id ON versions(key, version_id);
CREATE INDEX versions_order ON versions(key, seq DESC);
CREATE INDEX versions_blob ON versions(blob) WHERE blob IS NOT NULL;
CREATE TABLE uploads (
    upload_id TEXT PRIMARY KEY, key BLOB NOT NULL, opts TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, etag TEXT NOT NULL,
    size INTEGER NOT NULL, file TEXT NOT NULL, PRIMARY KEY (upload_id, part_number)
);
"""
_COLS = (
    "key, version_id, is_latest, is_delete_marker, size, etag, last_modified,"
    " content_type, metadata, system, blob, seq"
)
_LIVE = "is_latest = 1 AND is_delete_marker = 0"
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Row:
    """One row of `versions`."""

    key: bytes
    version_id: str
    is_latest: bool
    is_delete_marker: bool
    size: int
    etag: str
    last_modified: float
    content_type: str | None
    metadata: str
    system: str
    blob: str | None
    seq: int

    def info(self, *, listing: bool = False) -> ObjectInfo:
        vid: str | None = self.version_id
        if vid == c.NULL_VERSION and not listing:
            vid = None
        return ObjectInfo(
            key=self.key.decode(),
            size=self.size,
            etag=self.etag,
            last_modified=self.last_modified,
            metadata=_mapping(self.metadata),
            content_type=self.content_type,
            version_id=vid,
            is_latest=self.is_latest,
            is_delete_marker=self.is_delete_marker,
            system=_mapping(self.system),
        )


def _row(t: tuple[Any, ...]) -> Row:
    return Row(
        bytes(t[0]), t[1], bool(t[2]), bool(t[3]), t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11]
    )


def loads(text: str) -> dict[str, str]:
    if text == "{}":
        return {}
    return {str(k): str(v) for k, v in json.loads(text).items()}


def _mapping(text: str) -> Mapping[str, str]:
    """`loads` for an `ObjectInfo`: the shared empty mapping when there is nothing."""
    return EMPTY if text == "{}" else loads(text)


def _dumps(mapping: dict[str, str]) -> str:
    return json.dumps(mapping, sort_keys=True, ensure_ascii=False)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def connect(path: Path, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            code = "\n".join(line.split("--")[0] for line in _SCHEMA.splitlines())
            for statement in code.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO settings VALUES ('versioning', 'Off'), ('created', ?)",
                (repr(time.time()),),
            )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


class BucketIndex:
    """One bucket directory as opened by this process: SQLite connection, shared lock, blobs.

    `lock` serialises use of the connection by this process's threads; the file lock and
    SQLite's own locking order the processes.
    """

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.blobs = path / "blobs"
        self.uploads = path / "uploads"
        self.fsync = fsync
        self.lock = threading.Lock()
        self.closed = False
        index = path / "index.sqlite"
        st = os.stat(index)
        self.identity = (st.st_dev, st.st_ino)
        self._lock_fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self.conn = connect(index, fsync)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another process has the bucket open: its writes in flight are not garbage
            else:
                self._sweep()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.conn.close()
                os.close(self._lock_fd)

    @contextlib.contextmanager
    def _txn(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self.lock:
            if self.closed:
                raise BucketNotFound(f"bucket {self.path.name!r} was deleted")
            conn = self.conn
            conn.execute(begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A consistent snapshot of the index."""
        return self._txn("BEGIN")

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The one writer of this bucket, across threads and processes."""
        return self._txn("BEGIN IMMEDIATE")

    def _sweep(self) -> None:
        """Remove what a crash left behind; called only while no other process has the bucket."""
        with self.read() as conn:
            named = {r[0] for r in conn.execute("SELECT blob FROM versions WHERE blob IS NOT NULL")}
            uploads: dict[str, set[str]] = {}
            for upload_id, file in conn.execute(
                "SELECT u.upload_id, p.file FROM uploads u LEFT JOIN parts p USING (upload_id)"
            ):
                uploads.setdefault(upload_id, set()).add(file)
        removed = 0
        for entry in os.scandir(self.blobs):
            if entry.name not in named:
                os.unlink(entry.path)
                removed += 1
        for entry in os.scandir(self.uploads):
            if entry.name not in uploads:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
                continue
            for part in os.scandir(entry.path):
                if part.name not in uploads[entry.name]:
                    os.unlink(part.path)
                    removed += 1
        if removed:
            log.info("%s: removed %d files left over by an interrupted write", self.path, removed)

    # --- files ---------------------------------------------------------------------------
    def create_file(self, directory: Path) -> tuple[str, int]:
        name = c.new_id()
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return name, fd

    def finish_file(self, directory: Path, name: str, fd: int, ok: bool) -> None:
        """Close a file from `create_file`: durable if ok (and fsync), removed otherwise."""
        try:
            if ok and self.fsync:
                os.fsync(fd)
        except BaseException:
            ok = False
            raise
        finally:
            os.close(fd)
            if not ok:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)
        if ok and self.fsync:
            fsync_dir(directory)

    def write_file(self, directory: Path, data: bytes) -> str:
        name, fd = self.create_file(directory)
        ok = False
        try:
            write_all(fd, data)
            ok = True
        finally:
            self.finish_file(directory, name, fd, ok)
        return name

    def unlink_blobs(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blobs / name)

    def open_blob(self, name: str) -> int | None:
        """An fd on the blob, or None if it was removed meanwhile (its row is gone too)."""
        try:
            return os.open(self.blobs / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    # --- rows ----------------------------------------------------------------------------
    @staticmethod
    def versioning_locked(conn: sqlite3.Connection) -> str:
        row = conn.execute("SELECT value FROM settings WHERE name = 'versioning'").fetchone()
        return str(row[0])

    @staticmethod
    def find_locked(conn: sqlite3.Connection, kb: bytes, version_id: str | None) -> Row | None:
        if version_id is None:
            t = conn.execute(
                f"SELECT {_COLS} FROM versions WHERE key = ? AND is_latest = 1", (kb,)
            ).fetchone()
        else:
            t = conn.execute(
                f"SELECT {_COLS} FROM versions WHERE key = ? AND version_id = ?", (kb, version_id)
            ).fetchone()
        return None if t is None else _row(t)

    @classmethod
    def live_locked(cls, conn: sqlite3.Connection, kb: bytes, version_id: str | None) -> Row:
        row = cls.find_locked(conn, kb, version_id)
        if row is None or row.is_delete_marker:
            raise NotFound(f"no such key {kb.decode()!r}")
        return row

    @staticmethod
    def unreferenced_locked(conn: sqlite3.Connection, blobs: Sequence[str]) -> list[str]:
        return [
            b
            for b in blobs
            if conn.execute("SELECT 1 FROM versions WHERE blob = ? LIMIT 1", (b,)).fetchone()
            is None
        ]

    def install_locked(
        self,
        conn: sqlite3.Connection,
        kb: bytes,
        *,
        size: int,
        etag: str,
        opts: tuple[dict[str, str], str | None, dict[str, str]] = ({}, None, {}),
        blob: str | None = None,
        is_delete_marker: bool = False,
    ) -> tuple[str, list[str]]:
        """Make a new latest version of the key; returns its id and the blobs now unnamed."""
        freed: list[str] = []
        if self.versioning_locked(conn) == "Enabled":
            vid = c.new_id()
        else:
            vid = c.NULL_VERSION
            old = conn.execute(
                "SELECT seq, blob FROM versions WHERE key = ? AND version_id = ?", (kb, vid)
            ).fetchone()
            if old is not None:
                conn.execute("DELETE FROM versions WHERE seq = ?", (old[0],))
                if old[1] is not None:
                    freed.append(old[1])
        conn.execute("UPDATE versions SET is_latest = 0 WHERE key = ? AND is_latest = 1", (kb,))
        metadata, content_type, system = opts
        conn.execute(
            "INSERT INTO versions (key, version_id, is_latest, is_delete_marker, size, etag,"
            " last_modified, content_type, metadata, system, blob)"
            " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kb,
                vid,
                int(is_delete_marker),
                size,
                etag,
                time.time(),
                content_type,
                _dumps(metadata),
                _dumps(system),
                blob,
            ),
        )
        return vid, self.unreferenced_locked(conn, freed)

    def delete_locked(self, conn: sqlite3.Connection, kb: bytes) -> list[str]:
        """Delete the key as S3 does; returns the blobs now unnamed."""
        latest = self.find_locked(conn, kb, None)
        if latest is None or latest.is_delete_marker:
            return []
        if self.versioning_locked(conn) == "Off":
            blobs = [r[0] for r in conn.execute("SELECT blob FROM versions WHERE key = ?", (kb,))]
            conn.execute("DELETE FROM versions WHERE key = ?", (kb,))
            return self.unreferenced_locked(conn, [b for b in blobs if b is not None])
        return self.install_locked(conn, kb, size=0, etag="", is_delete_marker=True)[1]

    def seek_live(
        self, conn: sqlite3.Connection, hi: bytes
    ) -> Callable[[bytes, bool], Iterator[tuple[bytes, Row]]]:
        """Latest live objects from a key on, below `hi`, fetched in growing batches."""

        def seek(start: bytes, inclusive: bool) -> Iterator[tuple[bytes, Row]]:
            op, batch = (">=" if inclusive else ">"), 16
            while True:
                rows = conn.execute(
                    f"SELECT {_COLS} FROM versions WHERE {_LIVE} AND key {op} ? AND key < ?"
                    " ORDER BY key LIMIT ?",
                    (start, hi, batch),
                ).fetchall()
                for t in rows:
                    yield t[0], _row(t)
                if len(rows) < batch:
                    return
                start, op, batch = rows[-1][0], ">", min(batch * 4, 1024)

        return seek

    def seek_versions(
        self, conn: sqlite3.Connection, hi: bytes
    ) -> Callable[[bytes, bool], Iterator[tuple[bytes, Row]]]:
        """Every version from a key on, below `hi`: keys ascending, each newest first."""

        def seek(start: bytes, inclusive: bool) -> Iterator[tuple[bytes, Row]]:
            op, batch = (">=" if inclusive else ">"), 16
            while True:
                rows = conn.execute(
                    f"SELECT {_COLS} FROM versions WHERE key {op} ? AND key < ?"
                    " ORDER BY key, seq DESC LIMIT ?",
                    (start, hi, batch),
                ).fetchall()
                for t in rows:
                    yield t[0], _row(t)
                if len(rows) < batch:
                    return
                last = _row(rows[-1])
                yield from self.older_versions(conn, last.key, last.seq)
                start, op, batch = last.key, ">", min(batch * 4, 1024)

        return seek

    @staticmethod
    def older_versions(
        conn: sqlite3.Connection, kb: bytes, seq: int
    ) -> Iterator[tuple[bytes, Row]]:
        for t in conn.execute(
            f"SELECT {_COLS} FROM versions WHERE key = ? AND seq < ? ORDER BY seq DESC", (kb, seq)
        ).fetchall():
            yield t[0], _row(t)


def read_exactly(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`; a blob is never shorter than its row says."""
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 30), offset)
        if not chunk:
            raise BackendError("blob is shorter than its index says")
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
