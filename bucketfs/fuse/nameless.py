"""Readdir entries without an inode: a name the kernel lists but makes no inode for.

Owns `Entries`, which makes the READDIRPLUS entry for a core `Nameless` (core/readdir.py says
which names are shown so), and the check that it can be built (`AVAILABLE`).

The kernel's rule (fs/fuse/readdir.c, `fuse_direntplus_link`): an entry whose
`entry_out.nodeid` is 0 makes no dentry and no inode ("the filesystem did not want to return
attributes for this entry"), takes no lookup reference (so no FORGET comes back), and
`getdents` still reports the entry's name, its type and `dirent.ino`, which libfuse's
`fuse_add_direntry_plus` fills from `attr.st_ino`. pyfuse3 (3.5.0) sets the two numbers
together (`EntryAttributes.st_ino`), and an entry with both 0 is skipped by glibc's `readdir`.
So the entry is made with `st_ino` set to the reserved number, then its `fuse_entry_param.ino`
alone is cleared in place. The layout this needs (the CPython object header, then
`struct fuse_entry_param`: `ino`, `generation`, then `struct stat` with `st_ino` second) is
checked once at import by writing marker values and reading the object's memory back; if it
does not hold (another pyfuse3 or platform), `AVAILABLE` is False and readdir shows every
name with a node, as before.

Invariants: an entry from here always reads back `st_ino == 0` (no node) with the reserved
number in its `attr.st_ino`; nothing here is used when `AVAILABLE` is False.
"""

from __future__ import annotations

import ctypes
import sys

import pyfuse3

from bucketfs.core.nodes import Nameless

_INO_MARK = 0x5A5A_1234_5678_A5A5
_GEN_MARK = 0x0F0E_0D0C_0B0A_0908


def _ino_offset() -> int | None:
    """Where `fuse_entry_param.ino` sits in an `EntryAttributes`, if the layout is the one
    expected (see the module's docstring)."""
    probe = pyfuse3.EntryAttributes()
    probe.st_ino = _INO_MARK
    probe.generation = _GEN_MARK
    raw = ctypes.string_at(id(probe), sys.getsizeof(probe))
    ino = _INO_MARK.to_bytes(8, sys.byteorder)
    gen = _GEN_MARK.to_bytes(8, sys.byteorder)
    found = [i for i in range(0, len(raw) - 7, 8) if raw[i : i + 8] == ino]
    if len(found) != 2:
        return None
    entry, stat_ino = found
    # fuse_entry_param: ino, generation, struct stat (st_dev, st_ino, ...)
    if raw[entry + 8 : entry + 16] != gen or stat_ino != entry + 24:
        return None
    ctypes.memset(id(probe) + entry, 0, 8)
    if probe.st_ino != 0 or ctypes.string_at(id(probe) + stat_ino, 8) != ino:
        return None
    return entry


_OFFSET = _ino_offset()
#: whether nameless entries can be made with this pyfuse3
AVAILABLE = _OFFSET is not None


class Entries:
    """Makes the READDIRPLUS entries of one readdir reply: one `EntryAttributes` per file
    type, reused, whose `attr.st_ino` alone is written for each name through a ctypes view
    (`ino` stays 0). What `__call__` returns is valid until its next call: `readdir_reply`
    copies it into the reply at once (pyfuse3 `fuse_add_direntry_plus`). A new entry per name
    cost 1.2 us (a cleared `EntryAttributes`, two setters, a `memset`); this, 0.1 us."""

    __slots__ = ("_by_mode",)

    def __init__(self) -> None:
        assert _OFFSET is not None
        self._by_mode: dict[int, tuple[pyfuse3.EntryAttributes, ctypes.c_uint64]] = {}

    def __call__(self, item: Nameless) -> pyfuse3.EntryAttributes:
        made = self._by_mode.get(item.st_mode)
        if made is None:
            assert _OFFSET is not None
            attrs = pyfuse3.EntryAttributes()
            attrs.st_mode = item.st_mode
            attrs.entry_timeout = 0
            attrs.attr_timeout = 0
            # st_ino is left 0: with `ino` 0 the kernel makes no node; `attr.st_ino` is d_ino
            made = self._by_mode[item.st_mode] = (
                attrs,
                ctypes.c_uint64.from_address(id(attrs) + _OFFSET + 24),
            )
        attrs, st_ino = made
        st_ino.value = item.ino
        return attrs


def reserved_ino(attrs: pyfuse3.EntryAttributes) -> int:
    """The number `getdents` reports for an entry (its `attr.st_ino`); for tests."""
    assert _OFFSET is not None
    return int.from_bytes(ctypes.string_at(id(attrs) + _OFFSET + 24, 8), sys.byteorder)
