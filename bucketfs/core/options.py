"""The options of one mount's filesystem core (`-o` options, as app/mount.py reads them).

Owns `FsOptions`, a frozen value every part of the core reads. Invariants: it does not change
while the mount runs; timeouts are in seconds, sizes in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FsOptions:
    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    dir_timeout: float = 1.0
    dir_attr_timeout: float = 60.0
    negative_timeout: float = 1.0
    read_only: bool = False
    part_size: int = 16 << 20
    max_parallel: int = 16
    block_size: int = 1 << 20
    cache_size: int = 10 << 30
    writeback_delay: float = 1.0
    #: seconds an upload due may wait more while kernel requests keep coming (writeback.py)
    upload_defer: float = 5.0
    max_dirty: int = 2 << 30
    transfers: int = 16  # files uploaded at once (cache/writeback.py)
    upload_parts: int = 8  # multipart parts in flight, all files together (cache/writeback.py)
    meta_cache_size: int = 1_000_000  # HEAD results kept across mounts (cache/attrstore.py)
    noversions: bool = False  # hide the .versions/ tree (versions.py)
    url_ttl: int = 3600  # seconds a user.bucketfs.url stays valid (xattrs.py)
    #: "full": attributes from object metadata (a HEAD per listed file); "listing": from
    #: listings alone, no HEAD to list (namespace.py, `-o attrs=`)
    attrs: str = "full"
    #: "auto", "on", "off": send a large new file's parts while it is written (cache/early.py)
    early_parts: str = "off"
