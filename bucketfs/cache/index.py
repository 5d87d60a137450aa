"""The persistent index of the block cache (SQLite in WAL mode).

Owns `CACHE_DIR/index.sqlite`: one row per cached file (which object its clean blocks belong
to, its size, whether it is dirty, the metadata to upload it with) and one row per block that is
present in the data file (and whether that block is dirty).

Invariants:
- a file is marked dirty, and each block it dirtied is recorded, before the write that dirtied
  it returns (the commit reaches the OS before we answer the kernel, so a crash of the daemon
  loses nothing; `synchronous=NORMAL` leaves machine crashes to fsync, which uploads);
- a dirty file's row is deleted only after the server confirmed an upload of its latest
  generation, or when the file is deleted through the mount;
- file ids are given out here (`new_id`), not by SQLite, so a new file can have its id (and
  its data file) before its row exists (`add_new` writes it at the file's first FLUSH, row
  and blocks in one commit); an id whose row was ever written is never given out again (the
  counter starts past `sqlite_sequence`); one given out but never written (a new file a
  crash lost before its first FLUSH) may be given out again by a later start, after the
  sweep of data files removed the one it left;
- `key` is NULL for a file unlinked while open (its content is kept for the open handles and
  never uploaded), so a new file may take the name at once;
- `deletes` and `markers` are journals (cache/deletes.py, cache/markers.py): a row is written
  before the change it stands for is acknowledged and removed only once the server confirmed
  it (or, for a marker, once its directory was removed before it was sent);
- `uploads` holds every multipart upload id from before its first part is sent until the
  server confirmed its completion or abort: what a killed daemon leaves there is aborted by
  the next mount (cache/early.py), so no incomplete upload is left on the server;
- `settings.schema` is the layout's version (`SCHEMA_VERSION`): an older cache gains the new
  tables when it opens (they are only added, with `IF NOT EXISTS`); a cache written by a newer
  layout is refused rather than half read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bucketfs.errors import CacheError, CacheFull

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT,
    size INTEGER NOT NULL,
    base_etag TEXT,
    base_size INTEGER NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'clean',
    error TEXT,
    UNIQUE (bucket, key)
);
CREATE TABLE IF NOT EXISTS blocks (
    file_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    dirty INTEGER NOT NULL,
    PRIMARY KEY (file_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deletes (bucket TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS markers (bucket TEXT NOT NULL, key TEXT NOT NULL,
    meta TEXT NOT NULL, PRIMARY KEY (bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL,
    key TEXT NOT NULL) WITHOUT ROWID;
"""
#: 1: files, blocks, settings, deletes (no `schema` setting); 2: + markers (mkdir's journal);
#: 3: + uploads (multipart uploads started and not completed or aborted yet)
SCHEMA_VERSION = 3


@dataclass(slots=True)
class FileRow:
    id: int
    bucket: str
    key: str | None
    size: int
    base_etag: str | None
    base_size: int
    dirty: bool
    generation: int
    meta: dict[str, Any]
    state: str
    error: str | None


def _cache_error(exc: sqlite3.Error) -> CacheError:
    text = str(exc)
    if "full" in text:
        return CacheFull(f"cache disk full (index): {text}")
    return CacheError(f"cache index error: {text}")


#: bytes kept aside on the cache disk so the index can still record deletes and uploads
#: when the disk is full (given up on the first "disk full", taken again when there is room)
RESERVE_SIZE = 1 << 20


class _GuardedDb:
    """The SQLite connection, with every error turned into a CacheError (ENOSPC when full).

    A statement that fails for want of space frees the reserve file and is tried once more.
    `on_commit` is called after each statement that committed a change (a COMMIT, or a change
    outside a transaction): the WAL's checkpointer counts them (cache/checkpoints.py)."""

    def __init__(self, db: sqlite3.Connection, reserve: Path) -> None:
        self._db = db
        self._reserve = reserve
        self._changes = db.total_changes
        self.on_commit: Callable[[], None] | None = None
        self._take_reserve()

    def _take_reserve(self) -> None:
        if self._reserve.exists():
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def _committed(self) -> None:
        db = self._db
        if not db.in_transaction and db.total_changes != self._changes:
            self._changes = db.total_changes
            if self.on_commit is not None:
                self.on_commit()

    def _run(self, call: Any) -> sqlite3.Cursor:
        standalone = not self._db.in_transaction
        try:
            cursor: sqlite3.Cursor = call()
            self._committed()
            return cursor
        except sqlite3.Error as exc:
            error = _cache_error(exc)
            if not isinstance(error, CacheFull) or not self._reserve.exists():
                raise error from exc
            log.warning("cache disk full: giving up the index's reserve")
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            if not standalone:
                raise error from exc  # SQLite rolled the transaction back: the caller's ENOSPC
        try:
            cursor = call()
            self._committed()
            return cursor
        except sqlite3.Error as exc:
            raise _cache_error(exc) from exc

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        args = tuple(params)
        return self._run(lambda: self._db.execute(sql, args))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        batch = [tuple(row) for row in rows]
        return self._run(lambda: self._db.executemany(sql, batch))

    def retake_reserve(self) -> None:
        """After space was freed (eviction, a deleted file): set the reserve aside again."""
        self._take_reserve()

    def executescript(self, sql: str) -> None:
        try:
            self._db.executescript(sql)
        except sqlite3.Error as exc:
            raise _cache_error(exc) from exc

    def close(self) -> None:
        self._db.close()


class CacheIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _cache_error(exc) from exc
        self.db = _GuardedDb(connection, path.with_name("index.reserve"))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._check_schema()
        self._last_id = self._highest_id()

    def _check_schema(self) -> None:
        stored = self.setting("schema")
        if stored is not None and int(stored) > SCHEMA_VERSION:
            self.close()
            raise CacheError(
                f"{self.path} was written by a newer bucketfs (cache layout {stored}, this one "
                f"reads up to {SCHEMA_VERSION}): use that version, or another cache_dir"
            )
        if stored != str(SCHEMA_VERSION):
            self.set_setting("schema", str(SCHEMA_VERSION))

    def close(self) -> None:
        """The last connection's close checkpoints the WAL and removes it."""
        self.db.close()

    def autocheckpoint(self, pages: int) -> None:
        """Let a commit of this connection checkpoint once the WAL holds `pages` pages (SQLite's
        default is 1,000); 0: never (cache/checkpoints.py does it in a worker thread)."""
        self.db.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    def checkpoint(self, mode: str) -> tuple[int, int, int] | None:
        """`PRAGMA wal_checkpoint(mode)` on this connection: (busy, frames in the WAL, frames
        copied), None if it failed (logged: the WAL only grows until the next one)."""
        try:
            row = self.db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except CacheError as exc:
            log.warning("cache index: %s checkpoint failed: %s", mode, exc)
            return None
        return int(row[0]), int(row[1]), int(row[2])

    def _highest_id(self) -> int:
        """The highest file id ever written (AUTOINCREMENT's `sqlite_sequence` keeps it past
        deleted rows)."""
        (highest,) = self.db.execute("SELECT max(id) FROM files").fetchone()
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='files'").fetchone()
        return max(int(highest or 0), int(seq[0]) if seq is not None else 0)

    def new_id(self) -> int:
        """An id for a new file, never used by a row (see the module's invariants)."""
        self._last_id += 1
        return self._last_id

    # --- settings --------------------------------------------------------------------------

    def setting(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO settings(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, value),
        )

    # --- files -------------------------------------------------------------------------------

    @staticmethod
    def _row(row: tuple[Any, ...]) -> FileRow:
        return FileRow(
            id=row[0],
            bucket=row[1],
            key=row[2],
            size=row[3],
            base_etag=row[4],
            base_size=row[5],
            dirty=bool(row[6]),
            generation=row[7],
            meta=json.loads(row[8]),
            state=row[9],
            error=row[10],
        )

    _COLUMNS = "id, bucket, key, size, base_etag, base_size, dirty, generation, meta, state, error"

    def find(self, bucket: str, key: str) -> FileRow | None:
        row = self.db.execute(
            f"SELECT {self._COLUMNS} FROM files WHERE bucket=? AND key=?", (bucket, key)
        ).fetchone()
        return None if row is None else self._row(row)

    def get(self, file_id: int) -> FileRow | None:
        row = self.db.execute(
            f"SELECT {self._COLUMNS} FROM files WHERE id=?", (file_id,)
        ).fetchone()
        return None if row is None else self._row(row)

    def dirty_files(self) -> list[FileRow]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM files WHERE dirty=1 ORDER BY id")
        return [self._row(row) for row in rows]

    def add(self, bucket: str, key: str, size: int, base_etag: str | None) -> int:
        file_id = self.new_id()
        self.db.execute(
            "INSERT INTO files(id, bucket, key, size, base_etag, base_size)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (file_id, bucket, key, size, base_etag, size if base_etag else 0),
        )
        return file_id

    def add_new(
        self,
        file_id: int,
        bucket: str,
        key: str,
        size: int,
        meta: dict[str, Any],
        blocks: Iterable[int],
    ) -> None:
        """A new file (id from `new_id`), dirty, with its size, the metadata its upload will
        send and its dirty blocks: one commit."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO files(id, bucket, key, size, base_size, dirty, state, meta)"
                " VALUES (?, ?, ?, ?, 0, 1, 'dirty', ?)",
                (file_id, bucket, key, size, json.dumps(meta)),
            )
            self.set_blocks(file_id, blocks, dirty=True)

    def update(self, file_id: int, **fields: Any) -> None:
        if "meta" in fields:
            fields["meta"] = json.dumps(fields["meta"])
        if "dirty" in fields:
            fields["dirty"] = int(fields["dirty"])
        names = ", ".join(f"{name}=?" for name in fields)
        self.db.execute(f"UPDATE files SET {names} WHERE id=?", (*fields.values(), file_id))

    def detach(self, file_id: int) -> None:
        """The file was unlinked while open: it keeps its content but loses its name."""
        self.db.execute("UPDATE files SET key=NULL, dirty=0 WHERE id=?", (file_id,))

    def move(self, file_id: int, bucket: str, key: str) -> None:
        with self.transaction():
            self.db.execute(
                "DELETE FROM blocks WHERE file_id IN "
                "(SELECT id FROM files WHERE bucket=? AND key=? AND id<>?)",
                (bucket, key, file_id),
            )
            self.db.execute(
                "DELETE FROM files WHERE bucket=? AND key=? AND id<>?", (bucket, key, file_id)
            )
            self.db.execute("UPDATE files SET bucket=?, key=? WHERE id=?", (bucket, key, file_id))

    def remove(self, file_id: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM blocks WHERE file_id=?", (file_id,))
            self.db.execute("DELETE FROM files WHERE id=?", (file_id,))

    # --- blocks ------------------------------------------------------------------------------

    def blocks(self, file_id: int) -> Iterator[tuple[int, bool]]:
        for idx, dirty in self.db.execute(
            "SELECT idx, dirty FROM blocks WHERE file_id=?", (file_id,)
        ):
            yield int(idx), bool(dirty)

    def set_blocks(self, file_id: int, indexes: Iterable[int], *, dirty: bool) -> None:
        self.db.executemany(
            "INSERT INTO blocks(file_id, idx, dirty) VALUES (?, ?, ?) "
            "ON CONFLICT(file_id, idx) DO UPDATE SET dirty=excluded.dirty",
            ((file_id, idx, int(dirty)) for idx in indexes),
        )

    def drop_blocks(self, file_id: int, indexes: Iterable[int]) -> None:
        self.db.executemany(
            "DELETE FROM blocks WHERE file_id=? AND idx=?", ((file_id, idx) for idx in indexes)
        )

    def drop_all_blocks(self, file_id: int) -> None:
        self.db.execute("DELETE FROM blocks WHERE file_id=?", (file_id,))

    def mark_blocks_clean(self, file_id: int) -> None:
        self.db.execute("UPDATE blocks SET dirty=0 WHERE file_id=?", (file_id,))

    # --- deferred deletes (deletes.py): queued by unlink, sent in batches ------------------

    def add_delete(self, bucket: str, key: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO deletes(bucket, key) VALUES (?, ?)", (bucket, key))

    def remove_deletes(self, items: Iterable[tuple[str, str]]) -> None:
        self.db.executemany("DELETE FROM deletes WHERE bucket=? AND key=?", items)

    def pending_deletes(self) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT bucket, key FROM deletes ORDER BY bucket, key")
        return [(str(b), str(k)) for b, k in rows]

    # --- directory markers (markers.py): mkdir's marker PUT, sent in the background ---------

    def add_marker(self, bucket: str, key: str, meta: dict[str, Any]) -> None:
        """Record (or update) a marker to send, with the metadata it will carry."""
        self.db.execute(
            "INSERT INTO markers(bucket, key, meta) VALUES (?, ?, ?) "
            "ON CONFLICT(bucket, key) DO UPDATE SET meta=excluded.meta",
            (bucket, key, json.dumps(meta)),
        )

    def remove_markers(self, items: Iterable[tuple[str, str]]) -> None:
        self.db.executemany("DELETE FROM markers WHERE bucket=? AND key=?", items)

    def pending_markers(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self.db.execute("SELECT bucket, key, meta FROM markers ORDER BY bucket, key")
        return [(str(b), str(k), json.loads(m)) for b, k, m in rows]

    # --- multipart uploads in progress (early.py): aborted by the next mount after a kill -----

    def add_upload(self, upload_id: str, bucket: str, key: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO uploads(upload_id, bucket, key) VALUES (?, ?, ?)",
            (upload_id, bucket, key),
        )

    def remove_upload(self, upload_id: str) -> None:
        self.db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))

    def pending_uploads(self) -> list[tuple[str, str, str]]:
        """(upload id, bucket, key) of every upload not known completed or aborted."""
        rows = self.db.execute("SELECT upload_id, bucket, key FROM uploads ORDER BY upload_id")
        return [(str(u), str(b), str(k)) for u, b, k in rows]

    def clean_files(self) -> list[FileRow]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM files WHERE dirty=0 ORDER BY id")
        return [self._row(row) for row in rows]

    class _Txn:
        def __init__(self, db: _GuardedDb) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN")

        def __exit__(self, exc_type: object, *_: object) -> None:
            if exc_type is not None:
                self._rollback()
                return
            try:
                self.db.execute("COMMIT")
            except CacheError:
                self._rollback()
                raise

        def _rollback(self) -> None:
            # SQLite may have rolled back already (a full disk during COMMIT does)
            with contextlib.suppress(CacheError):
                self.db.execute("ROLLBACK")

    def transaction(self) -> CacheIndex._Txn:
        return CacheIndex._Txn(self.db)
