"""POSIX attributes kept in object metadata, and which keys can be file names.

Owns the translation between an object's user metadata and a node's mode/uid/gid/mtime/atime,
using the keys s3fs and rclone use: `mode` (decimal st_mode, file type bits included), `uid`,
`gid`, `mtime` and `atime` (POSIX seconds, decimal, fraction allowed; `atime` is written only
once known: set by `utimensat` or at create, never by a read), and `rdev` (decimal st_rdev,
written for character and block devices only, as s3fs does). The type bits say what an object
is: a regular file, a symlink, or a special file (fifo, socket, device: an empty object; the
kernel serves its I/O). Invariants: parsing never raises (a value another tool wrote that we
cannot read is ignored and the mount's default used); a name is valid iff it can be a Linux
file name: non-empty, not "." or "..", no "/" or NUL, at most 255 bytes in UTF-8.
"""

from __future__ import annotations

import logging
import math
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from bucketfs.core.nodes import KIND_BITS, SPECIAL_KINDS, Kind
from bucketfs.errors import InvalidArgument, NameTooLong

log = logging.getLogger(__name__)

POSIX_KEYS = ("mode", "uid", "gid", "mtime", "atime", "rdev")
RDEV = "rdev"
_KINDS = {bits: kind for kind, bits in KIND_BITS.items()}
NAME_MAX = 255
#: st_mtime_ns is a signed 64-bit count of nanoseconds
MAX_MTIME = 2**63 / 1e9 - 1


@dataclass(frozen=True, slots=True)
class Defaults:
    """What an object without POSIX metadata looks like."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    kind: Kind | None  # None: the metadata does not say
    mode: int | None
    uid: int | None
    gid: int | None
    mtime: float | None
    atime: float | None = None


def _int(value: str | None, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip(), base)
    except ValueError:
        return None


def _raw_mode(metadata: Mapping[str, str]) -> int | None:
    """The `mode` metadata as an st_mode, if it is a readable one."""
    raw_mode = _int(metadata.get("mode"))
    return raw_mode if raw_mode is not None and 0 <= raw_mode < 1 << 32 else None


def parse_posix(metadata: Mapping[str, str]) -> PosixAttrs:
    raw_mode = _raw_mode(metadata)
    kind: Kind | None = None
    mode: int | None = None
    if raw_mode is not None:
        kind = _KINDS.get(stat.S_IFMT(raw_mode))
        mode = raw_mode & 0o7777
    uid = _int(metadata.get("uid"))
    gid = _int(metadata.get("gid"))
    return PosixAttrs(
        kind=kind,
        mode=mode,
        uid=uid if uid is not None and uid >= 0 else None,
        gid=gid if gid is not None and gid >= 0 else None,
        mtime=_seconds(metadata.get("mtime")),
        atime=_seconds(metadata.get("atime")),
    )


def object_kind(metadata: Mapping[str, str]) -> Kind:
    """What an object (not a `dir/` marker) is: what its `mode` says, else a regular file
    (`parse_posix`'s kind, without parsing the rest)."""
    raw_mode = _raw_mode(metadata)
    kind = None if raw_mode is None else _KINDS.get(stat.S_IFMT(raw_mode))
    return Kind.FILE if kind is None or kind is Kind.DIR else kind


def special_kind(st_mode: int) -> Kind | None:
    """The special kind mknod(2) asks for; None for a regular file (mknod is then a create)."""
    fmt = stat.S_IFMT(st_mode)
    if fmt in (0, stat.S_IFREG):
        return None
    kind = _KINDS.get(fmt)
    if kind not in SPECIAL_KINDS:
        raise InvalidArgument(f"mknod cannot make file type {fmt:o}")
    return kind


def parse_rdev(metadata: Mapping[str, str]) -> int:
    """st_rdev from `rdev` metadata (0 when absent or unreadable)."""
    rdev = _int(metadata.get(RDEV))
    return rdev if rdev is not None and 0 <= rdev < 1 << 64 else 0


def rdev_metadata(kind: Kind, rdev: int) -> dict[str, str]:
    """The `rdev` entry a new special file's object carries (devices only, as s3fs)."""
    return {RDEV: str(rdev)} if kind in (Kind.CHAR, Kind.BLOCK) else {}


def _seconds(raw: str | None) -> float | None:
    """A time in POSIX seconds as `format_mtime` writes it (or any float); None if unusable."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) < MAX_MTIME else None


def format_mtime(mtime: float) -> str:
    """Seconds with up to nanosecond fraction, no exponent (as rclone writes it)."""
    text = f"{mtime:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def posix_metadata(
    st_mode: int, uid: int, gid: int, mtime: float, atime: float | None = None
) -> dict[str, str]:
    meta = {"mode": str(st_mode), "uid": str(uid), "gid": str(gid), "mtime": format_mtime(mtime)}
    if atime is not None:
        meta["atime"] = format_mtime(atime)
    return meta


_warned: set[str] = set()


def valid_name(name: str, *, where: str = "") -> bool:
    """Whether `name` (one key segment) can be shown as a file name; logs a bad one once."""
    ok = name not in ("", ".", "..") and "\0" not in name and "/" not in name
    if ok and name.isascii():  # one byte a character: no encoding to count them
        ok = len(name) <= NAME_MAX
    elif ok:
        try:
            ok = len(name.encode("utf-8")) <= NAME_MAX
        except UnicodeEncodeError:
            ok = False
    if not ok and where not in _warned:
        if len(_warned) < 10_000:
            _warned.add(where)
        log.warning("skipping key %r: %r cannot be a file name", where, name[:64])
    return ok


def check_new_name(name: str) -> None:
    """Refuse a name the user asked to create that cannot round-trip as a key segment."""
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise NameTooLong(f"name longer than {NAME_MAX} bytes")
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument("file names must be valid UTF-8 to be stored as keys") from exc
