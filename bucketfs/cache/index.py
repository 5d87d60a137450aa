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
- `key` is NULL for a file unlinked while open (its content is kept for the open handles and
  never uploaded), so a new file may take the name at once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
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
"""


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


class CacheIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

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
        cursor = self.db.execute(
            "INSERT INTO files(bucket, key, size, base_etag, base_size) VALUES (?, ?, ?, ?, ?)",
            (bucket, key, size, base_etag, size if base_etag else 0),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

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

    def clean_files(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT id FROM files WHERE dirty=0")]

    class _Txn:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN")

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self) -> CacheIndex._Txn:
        return CacheIndex._Txn(self.db)
