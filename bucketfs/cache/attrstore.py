"""Attributes that outlive a mount: what a HEAD established about an object, kept in
`CACHE_DIR/attrs.sqlite`, so that a listing entry with the same ETag, size and LastModified is
answered without a HEAD, in this mount and in every later mount of the same cache directory.

Owns `attrs.sqlite` (one row per key: ETag, size, LastModified, version id, user metadata,
content type, system headers, storage class, the server's `Date` of the HEAD, and a use stamp
for eviction), and `settled`, the rule below, which core/revalidate.py applies too.

Invariants:
- a row is written only from a HEAD whose server `Date` is at least its LastModified plus
  `SETTLE` seconds. LastModified has one-second resolution, and a metadata-only change by
  another client (a server-side copy onto itself) keeps ETag and size: any change made after
  that answer has a LastModified in a later second, so a row matches only the version it
  describes. The local clock is never compared with LastModified; a HEAD without `Date`
  is not kept;
- a row is used only when a listing entry's ETag, size and LastModified (to the second) equal
  it, so a newer listing that contradicts a row (also one left by a killed daemon) is never
  answered from it;
- rows are written in batches off the kernel's path (`run`: at most `FLUSH_EVERY` seconds
  late, at `close` too); a killed daemon loses the last batch, which only costs HEADs;
- at most `max_rows` rows; the least recently used go first (use stamps advance once per
  batch). The file goes with the cache directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import trio

from bucketfs.types import ObjectInfo

log = logging.getLogger(__name__)

#: a HEAD answered at least this long after LastModified makes a row (see the invariants)
SETTLE = 2.0
#: rows wait at most this long in memory before they are written
FLUSH_EVERY = 1.0
#: rows kept by default (-o meta_cache_size=); about 250 bytes each on disk
DEFAULT_ROWS = 1_000_000
#: keys read per query by `load`
LOAD_CHUNK = 500

#: rows as `load` reads them, by key: (etag, size, modified second, info), None: no row
Rows = dict[str, tuple[str, int, int, str] | None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS attrs (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    modified INTEGER NOT NULL,
    info TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attrs_used ON attrs (used);
"""


def _second(t: float) -> int:
    return int(t)


def settled(info: ObjectInfo) -> bool:
    """Whether the server answered this HEAD at least SETTLE s after the object's
    LastModified (its own `Date`, never the local clock): any later change to the object,
    a copy onto itself included, has a LastModified in a later second."""
    return info.server_date is not None and info.server_date >= info.last_modified + SETTLE


def _encode(info: ObjectInfo) -> str:
    return json.dumps(
        {
            "lm": info.last_modified,
            "meta": dict(info.metadata),
            "ct": info.content_type,
            "vid": info.version_id,
            "sc": info.storage_class,
            "sys": dict(info.system),
            "sd": info.server_date,
        },
        separators=(",", ":"),
    )


def _decode(key: str, etag: str, size: int, text: str) -> ObjectInfo:
    d: dict[str, Any] = json.loads(text)
    return ObjectInfo(
        key=key,
        size=size,
        etag=etag,
        last_modified=float(d["lm"]),
        metadata=d["meta"],
        content_type=d["ct"],
        version_id=d["vid"],
        storage_class=d["sc"],
        system=d["sys"],
        server_date=d.get("sd"),  # rows written before it was kept have none
    )


class AttrStore:
    """Rows of what HEADs said, matched against listing entries."""

    def __init__(self, path: Path, *, max_rows: int = DEFAULT_ROWS) -> None:
        self.max_rows = max_rows
        self._db: sqlite3.Connection | None = None
        self._pending: dict[tuple[str, str], ObjectInfo] = {}
        #: the rows the last `load` read, by bucket: `match` without rows of its own uses
        #: them (readdir reads a directory's rows in bulk, then the prefetch asks per name);
        #: a row written since is taken out of them at `flush`
        self._recent: tuple[str, Rows] = ("", {})
        self._used: set[tuple[str, str]] = set()
        self._stamp = 0
        self._rows = 0
        self.hits = 0
        if max_rows <= 0:
            return
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._stamp = int(db.execute("SELECT coalesce(max(used), 0) FROM attrs").fetchone()[0])
            self._rows = int(db.execute("SELECT count(*) FROM attrs").fetchone()[0])
        except sqlite3.Error as exc:
            # a cache of HEADs: without it bucketfs only asks the server more often
            log.warning("attribute cache %s not usable (%s): not keeping attributes", path, exc)
            return
        self._db = db

    @property
    def rows(self) -> int:
        return self._rows + len(self._pending)

    def match(
        self,
        bucket: str,
        key: str,
        etag: str,
        size: int,
        modified: float,
        loaded: Rows | None = None,
    ) -> ObjectInfo | None:
        """What a HEAD said of this version of the object, if a row has it: `etag`, `size` and
        `modified` are what a listing says now; `loaded`: rows `load` read (of the same
        bucket), used instead of a query when they hold `key` (by default the last `load`'s:
        a cold walk's prefetch asked a query per name that readdir had just found absent)."""
        held = self._version(bucket, key, etag, size, modified, loaded)
        if held is None:
            return None
        self._used.add((bucket, key))
        self.hits += 1
        return _decode(key, etag, size, held) if isinstance(held, str) else held

    def holds(
        self, bucket: str, key: str, etag: str, size: int, modified: float, loaded: Rows
    ) -> bool:
        """Whether `match` would find this version, without decoding the row nor counting it
        as used (readdir asks before deciding whether to wait for a HEAD)."""
        return self._version(bucket, key, etag, size, modified, loaded) is not None

    def _version(
        self, bucket: str, key: str, etag: str, size: int, modified: float, loaded: Rows | None
    ) -> ObjectInfo | str | None:
        """This version's answer not yet written (an `ObjectInfo`), or its row's encoded
        info (a `str`), if held (`match`)."""
        if self._db is None or not etag:
            return None
        info = self._pending.get((bucket, key))
        if info is not None:
            if (info.etag, info.size, _second(info.last_modified)) != (
                etag,
                size,
                _second(modified),
            ):
                return None
            return info
        if loaded is None and self._recent[0] == bucket:
            loaded = self._recent[1]
        if loaded is not None and key in loaded:
            row = loaded[key]
        else:
            try:
                row = self._db.execute(
                    "SELECT etag, size, modified, info FROM attrs WHERE bucket=? AND key=?",
                    (bucket, key),
                ).fetchone()
            except sqlite3.Error as exc:
                log.debug("attribute cache read failed: %s", exc)
                return None
        if row is None or (row[0], row[1], row[2]) != (etag, size, _second(modified)):
            return None
        text: str = row[3]
        return text

    def load(self, bucket: str, keys: list[str]) -> Rows:
        """The rows of `keys` (None: no row), `LOAD_CHUNK` keys to a query, for the `match`es
        that follow (a directory's names handed out in turn: one query per name was a fifth of
        a remounted `ls -lR`'s CPU). A row written later is not in them: its `match` misses."""
        loaded: Rows = {}
        if self._db is None:
            return loaded
        try:
            for start in range(0, len(keys), LOAD_CHUNK):
                chunk = keys[start : start + LOAD_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT key, etag, size, modified, info FROM attrs "
                    f"WHERE bucket=? AND key IN ({marks})",
                    (bucket, *chunk),
                ).fetchall()
                loaded.update(dict.fromkeys(chunk))
                for key, etag, size, modified, text in rows:
                    loaded[key] = (etag, size, modified, text)
        except sqlite3.Error as exc:
            log.debug("attribute cache read failed: %s", exc)
        self._recent = (bucket, dict(loaded))  # (a copy: `flush` takes rows out of it)
        return loaded

    def remember(self, bucket: str, info: ObjectInfo) -> None:
        """A HEAD's answer: kept if the server answered it long enough after LastModified."""
        if self._db is None or not info.etag or info.is_delete_marker or not settled(info):
            return
        self._pending[(bucket, info.key)] = info

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what was remembered and used, every FLUSH_EVERY seconds."""
        task_status.started()
        while True:
            await trio.sleep(FLUSH_EVERY)
            if self._pending or self._used:
                self.flush()

    def flush(self) -> None:
        db = self._db
        if db is None:
            return
        pending, self._pending = self._pending, {}
        used, self._used = self._used, set()
        recent_bucket, recent = self._recent
        for bucket, key in pending:
            if bucket == recent_bucket:
                recent.pop(key, None)  # its row is in the file from now on: ask the file
        self._stamp += 1
        try:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO attrs(bucket, key, etag, size, modified, info, used) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(bucket, key) DO UPDATE SET "
                "etag=excluded.etag, size=excluded.size, modified=excluded.modified, "
                "info=excluded.info, used=excluded.used",
                [
                    (b, k, i.etag, i.size, _second(i.last_modified), _encode(i), self._stamp)
                    for (b, k), i in pending.items()
                ],
            )
            db.executemany(
                "UPDATE attrs SET used=? WHERE bucket=? AND key=?",
                [(self._stamp, b, k) for (b, k) in used - pending.keys()],
            )
            self._rows += len(pending)  # at most: some replaced a row
            if self._rows > self.max_rows:
                self._rows = int(db.execute("SELECT count(*) FROM attrs").fetchone()[0])
            if self._rows > self.max_rows:
                db.execute(
                    "DELETE FROM attrs WHERE (bucket, key) IN (SELECT bucket, key FROM attrs "
                    "ORDER BY used LIMIT ?)",
                    (self._rows - self.max_rows,),
                )
                self._rows = self.max_rows
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("attribute cache write failed (%s): %d rows not kept", exc, len(pending))
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None
