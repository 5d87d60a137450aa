"""What the user asked for: the mount source, the mountpoint and the `-o` options, as values.

Owns turning the command line (and the environment it inherits) into a `MountConfig`. No I/O
besides reading the environment and the home directory: nothing here touches the mountpoint,
the store or the network; `cli.py` checks those.

Invariants of every `MountConfig` (also one built directly, not through `build_config`):
- `mountpoint`, `store` and `cache_dir` are absolute;
- `cache_dir` is distinct for every (scheme, endpoint or store, bucket, prefix), so pending
  uploads of one source can never be sent to another;
- `fsname` never holds a comma (libfuse splits its option string on commas);
- `Source.prefix` is "" or ends with "/", has no empty, "." or ".." segment, and is "" when
  `Source.bucket` is None.

Every error is a `ConfigError` whose message names the option (or the source) and the value.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from bucketfs.errors import ConfigError

MiB = 1024 * 1024
#: S3's part-size limits; `part_size` outside them is refused up front.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB

SCHEMES = ("s3", "local", "swift")
Scheme = Literal["s3", "local", "swift"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Generic mount(8)/fstab options that mean nothing to bucketfs and are accepted silently
#: (`ro` is not here: it makes the mount read-only). `x-*` options are ignored as well.
IGNORED_OPTIONS = frozenset(
    {
        "defaults",
        "_netdev",
        "nofail",
        "noauto",
        "auto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "rw",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "nodiratime",
        "diratime",
        "lazytime",
        "sync",
        "async",
        "loud",
        "silent",
        # mount(8) keeps these in /run/mount/utab: `helper=bucketfs` makes umount(8) run
        # umount.bucketfs, which waits for the uploads (see cli.umount_helper_main)
        "helper",
        "uhelper",
        "comment",
        "_rnetdev",
    }
)

#: An S3 bucket name (also accepts the legacy upper-case/underscore names some servers allow).
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_SIZE_RE = re.compile(r"^(\d+)\s*([kmgt]?)(i?b?)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Source:
    """Where the files come from: a whole store, one bucket, or a prefix inside a bucket."""

    scheme: Scheme
    bucket: str | None  # None: every bucket is a top-level directory
    prefix: str = ""  # "" or ends with "/"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket or ''}{'/' + self.prefix if self.prefix else ''}"


def default_store_root(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """/var/lib/bucketfs/store for root, $XDG_DATA_HOME/bucketfs/store for everyone else."""
    return _state_root(euid, env, "/var/lib", "XDG_DATA_HOME", ".local/share") / "store"


def default_cache_root(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """/var/cache/bucketfs for root, $XDG_CACHE_HOME/bucketfs for everyone else."""
    return _state_root(euid, env, "/var/cache", "XDG_CACHE_HOME", ".cache")


def _state_root(
    euid: int | None, env: Mapping[str, str] | None, system: str, xdg_var: str, home_rel: str
) -> Path:
    euid = os.geteuid() if euid is None else euid
    env = os.environ if env is None else env
    if euid == 0:
        return Path(system) / "bucketfs"
    xdg = env.get(xdg_var, "")
    if xdg and os.path.isabs(xdg):  # the XDG spec says: ignore a relative value
        return Path(xdg) / "bucketfs"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / home_rel / "bucketfs"


_UNSET = Path()  # the default of `cache_dir`: derive it from the source


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Everything the daemon needs to serve one mount. See the module docstring's invariants."""

    source: Source
    mountpoint: Path
    foreground: bool = False
    endpoint: str | None = None  # -o endpoint=URL; None: AWS's endpoint for the region
    region: str | None = None  # None: botocore's chain (AWS_REGION, profile) decides
    profile: str | None = None  # None: AWS_PROFILE or "default"
    path_style: bool | None = None  # -o addressing=path|virtual|auto (None)
    # swift: -o auth_url=URL, else ST_AUTH / OS_AUTH_URL / OS_STORAGE_URL of the environment
    # (the credentials themselves come from the environment only: see backends/swift/auth.py)
    auth_url: str | None = None
    create_tempurl_key: bool = False  # swift: -o create_tempurl_key, if the account has none
    store: Path = field(default_factory=default_store_root)  # local:// root directory
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    file_mode: int | None = None  # None: from object metadata, else 0o666 & ~umask
    dir_mode: int | None = None  # None: from object metadata, else 0o777 & ~umask
    ro: bool = False
    allow_other: bool = False
    cache_dir: Path = _UNSET  # Path() means: default_cache_root() / <escaped source>
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    dir_timeout: float = 1.0
    #: how long a directory's own attributes (its `dir/` marker's mode, owner, mtime) are
    #: reused; its existence is still checked with its parent's listing (dir_timeout)
    dir_attr_timeout: float = 60.0
    negative_timeout: float = 1.0
    debug: bool = False
    log_level: str = "INFO"
    max_connections: int = 32
    retry_timeout: float = 60.0  # -o retry_timeout=SECONDS: give up on a request (EIO) after
    part_size: int = 16 * MiB
    cache_size: int = 10 * 1024 * MiB  # -o cache_size=: clean cached bytes kept at most
    block_size: int = MiB  # -o block_size=: unit of caching and of ranged GETs
    max_dirty: int = 2 * 1024 * MiB  # -o max_dirty=: writers wait above this many dirty bytes
    transfers: int = 16  # -o transfers=N: files uploaded at once
    upload_parts: int = 8  # -o upload_parts=N: multipart parts in flight (memory: N x part_size)
    meta_cache_size: int = 1_000_000  # -o meta_cache_size=N: HEAD results kept across mounts
    max_nodes: int = 50_000  # -o max_nodes=N: names kept in memory (the kernel forgets the rest)
    writeback_delay: float = 1.0  # -o writeback_delay=SECONDS: quiet period before an upload
    upload_defer: float = 5.0  # -o upload_defer=SECONDS: uploads wait for a busy mount that long
    noversions: bool = False  # -o noversions: no .versions/ directories
    url_ttl: int = 3600  # -o url_ttl=SECONDS: lifetime of a user.bucketfs.url
    attrs: str = "full"  # -o attrs=full|listing: where file attributes come from
    early_parts: str = "auto"  # -o early_parts=auto|on|off: large new files sent while written
    fsname: str = ""  # "": str(source), as shown in /proc/mounts
    # S3 keys from a remote in a config file (bucketfs.app.config); None: botocore's chain. Never
    # in a repr, never an -o option (the command line shows in ps).
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.cache_dir == _UNSET:
            where = self.auth_url if self.source.scheme == "swift" else self.endpoint
            derived = default_cache_root() / cache_name(self.source, where, self.store)
            object.__setattr__(self, "cache_dir", derived)
        for name in ("mountpoint", "store", "cache_dir"):
            path: Path = getattr(self, name)
            if not path.is_absolute():
                object.__setattr__(self, name, Path(os.path.abspath(path)))
        fsname = self.fsname or str(self.source)
        object.__setattr__(self, "fsname", fsname.replace(",", "%2C"))


def cache_name(source: Source, endpoint: str | None, store: Path) -> str:
    """A file name for this source's cache: readable, and unique per store and endpoint (for
    swift:// the auth URL)."""
    where = (endpoint or "") if source.scheme in ("s3", "swift") else str(store)
    ident = f"{source.scheme}\0{where}\0{source.bucket or ''}\0{source.prefix}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    readable = "-".join(p for p in (source.scheme, source.bucket, source.prefix) if p)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("_")[:80]
    return f"{readable}-{digest}"


# --- the source ----------------------------------------------------------------------------


def parse_source(text: str) -> Source:
    """`s3://`, `s3://BUCKET`, `s3://BUCKET/PRE/FIX`, and the same with `local://` and
    `swift://` (a Swift container name is 1-256 bytes of anything but '/' and NUL)."""
    usage = "expected s3://[BUCKET[/PREFIX]], swift://[CONTAINER[/PREFIX]] or local://..."
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"bad source {text!r}: {usage}")
    if scheme not in SCHEMES:
        raise ConfigError(f"bad source {text!r}: unknown scheme {scheme!r} ({usage})")
    if not rest:
        return Source(cast(Scheme, scheme), None, "")
    bucket, _, prefix = rest.partition("/")
    if scheme == "swift":
        if not 1 <= len(bucket.encode()) <= 256 or "\0" in bucket or bucket in (".", ".."):
            raise ConfigError(f"bad source {text!r}: {bucket!r} is not a valid container name")
    elif not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"bad source {text!r}: {bucket!r} is not a valid bucket name "
            "(3-255 letters, digits, '.', '-' or '_', starting and ending with a letter or digit)"
        )
    if prefix:
        segments = prefix.removesuffix("/").split("/")
        if any(s in ("", ".", "..") for s in segments) or "\0" in prefix:
            raise ConfigError(
                f"bad source {text!r}: the prefix {prefix!r} has an empty, '.' or '..' part"
            )
        prefix = "/".join(segments) + "/"
    return Source(cast(Scheme, scheme), bucket, prefix)


# --- the -o options ------------------------------------------------------------------------


def parse_options(opts: Sequence[str]) -> dict[str, str]:
    """Split every `-o` argument on commas into `key` or `key=value`; a later key wins.

    A bare `key` maps to "" (a flag); an empty item (as in `a,,b`) is skipped.
    """
    parsed: dict[str, str] = {}
    for arg in opts:
        for item in arg.split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip()
            if not key:
                raise ConfigError(f"bad option {item!r}: no name before '='")
            parsed[key] = value.strip()
    return parsed


def parse_flag(key: str, value: str) -> bool:
    """A flag option: bare (`ro`) or with yes/no, true/false, on/off, 1/0."""
    lowered = value.lower()
    if lowered in ("", "1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"bad value for option '{key}': {value!r} (a flag takes no value)")


def _needs_value(key: str, value: str) -> str:
    if not value:
        raise ConfigError(f"option '{key}' needs a value: -o {key}=...")
    return value


def _octal(key: str, value: str) -> int:
    try:
        number = int(_needs_value(key, value), 8)
    except ValueError:
        number = -1
    if not 0 <= number <= 0o7777:
        raise ConfigError(f"bad value for option '{key}': {value!r} (an octal mode like 0644)")
    return number


def _id(key: str, value: str) -> int:
    if not _needs_value(key, value).isdigit() or int(value) >= 2**32 - 1:
        raise ConfigError(f"bad value for option '{key}': {value!r} (a numeric id)")
    return int(value)


def _seconds(key: str, value: str) -> float:
    try:
        number = float(_needs_value(key, value))
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise ConfigError(f"bad value for option '{key}': {value!r} (seconds, a number >= 0)")
    return number


def _count(key: str, value: str) -> int:
    if not _needs_value(key, value).isdigit() or not 1 <= int(value) <= 1024:
        raise ConfigError(f"bad value for option '{key}': {value!r} (a number from 1 to 1024)")
    return int(value)


def _rows(key: str, value: str) -> int:
    if not _needs_value(key, value).isdigit() or int(value) > 1 << 40:
        raise ConfigError(f"bad value for option '{key}': {value!r} (a number of entries, 0: off)")
    return int(value)


def parse_size(key: str, value: str) -> int:
    """Bytes: `16777216`, `16M`, `16MiB` (K, M, G, T and KiB... are powers of 1024; KB, MB,
    GB, TB powers of 1000)."""
    match = _SIZE_RE.match(_needs_value(key, value).strip())
    if not match or (match.group(3) and not match.group(2)):
        raise ConfigError(f"bad value for option '{key}': {value!r} (bytes, like 16M or 16MiB)")
    digits, unit, suffix = match.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    base = 1000 if suffix.lower() == "b" else 1024
    return int(digits) * int(base**power)


def _path(key: str, value: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(_needs_value(key, value))))


def _endpoint(key: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", _needs_value(key, value)):
        raise ConfigError(
            f"bad value for option '{key}': {value!r} (a URL like https://s3.example.com)"
        )
    return value.rstrip("/")


def _addressing(key: str, value: str) -> bool | None:
    styles = {"path": True, "virtual": False, "auto": None}
    if value not in styles:
        raise ConfigError(f"bad value for option '{key}': {value!r} (path, virtual or auto)")
    return styles[value]


def _log_level(key: str, value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ConfigError(
            f"bad value for option '{key}': {value!r} (one of {', '.join(LOG_LEVELS)})"
        )
    return value.upper()


def _text(key: str, value: str) -> str:
    return _needs_value(key, value)


def _part_size(key: str, value: str) -> int:
    size = parse_size(key, value)
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ConfigError(f"bad value for option '{key}': {value!r} (from 5MiB to 5GiB)")
    return size


def _byte_count(key: str, value: str) -> int:
    size = parse_size(key, value)
    if size <= 0:
        raise ConfigError(f"bad value for option '{key}': {value!r} (a size above 0)")
    return size


def _block_size(key: str, value: str) -> int:
    size = parse_size(key, value)
    if size < 4096 or size > 64 * MiB or size & (size - 1):
        raise ConfigError(
            f"bad value for option '{key}': {value!r} (a power of two from 4KiB to 64MiB)"
        )
    return size


def _attrs(key: str, value: str) -> str:
    if value not in ("full", "listing"):
        raise ConfigError(f"bad value for option '{key}': {value!r} (full or listing)")
    return value


def _early_parts(key: str, value: str) -> str:
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"bad value for option '{key}': {value!r} (auto, on or off)")
    return value


def _url_ttl(key: str, value: str) -> int:
    """Seconds a presigned URL lives: 1 to 604800 (7 days, SigV4's limit)."""
    if not _needs_value(key, value).isdigit() or not 1 <= int(value) <= 604800:
        raise ConfigError(f"bad value for option '{key}': {value!r} (seconds, 1 to 604800)")
    return int(value)


#: -o name -> (MountConfig field, parser). Every option the README documents is here.
_OPTIONS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "endpoint": ("endpoint", _endpoint),
    "region": ("region", _text),
    "profile": ("profile", _text),
    "addressing": ("path_style", _addressing),
    "store": ("store", _path),
    "uid": ("uid", _id),
    "gid": ("gid", _id),
    "umask": ("umask", _octal),
    "file_mode": ("file_mode", _octal),
    "dir_mode": ("dir_mode", _octal),
    "ro": ("ro", parse_flag),
    "allow_other": ("allow_other", parse_flag),
    "cache_dir": ("cache_dir", _path),
    "attr_timeout": ("attr_timeout", _seconds),
    "entry_timeout": ("entry_timeout", _seconds),
    "dir_timeout": ("dir_timeout", _seconds),
    "dir_attr_timeout": ("dir_attr_timeout", _seconds),
    "negative_timeout": ("negative_timeout", _seconds),
    "debug": ("debug", parse_flag),
    "log_level": ("log_level", _log_level),
    "max_connections": ("max_connections", _count),
    "retry_timeout": ("retry_timeout", _seconds),
    "part_size": ("part_size", _part_size),
    "cache_size": ("cache_size", _byte_count),
    "block_size": ("block_size", _block_size),
    "max_dirty": ("max_dirty", _byte_count),
    "transfers": ("transfers", _count),
    "upload_parts": ("upload_parts", _count),
    "meta_cache_size": ("meta_cache_size", _rows),
    "max_nodes": ("max_nodes", _rows),
    "writeback_delay": ("writeback_delay", _seconds),
    "upload_defer": ("upload_defer", _seconds),
    "noversions": ("noversions", parse_flag),
    "url_ttl": ("url_ttl", _url_ttl),
    "attrs": ("attrs", _attrs),
    "early_parts": ("early_parts", _early_parts),
    "auth_url": ("auth_url", _endpoint),
    "create_tempurl_key": ("create_tempurl_key", parse_flag),
}
_S3_ONLY = ("endpoint", "profile", "addressing")
_SWIFT_ONLY = ("auth_url", "create_tempurl_key")
_S3_OR_SWIFT = ("region",)  # swift: the Keystone catalog's region
#: Credentials are refused as -o options: a command line shows in ps and /proc/PID/cmdline.
SECRET_OPTIONS = frozenset(
    {"access_key_id", "secret_access_key", "session_token", "access_key", "secret_key"}
    | {"password", "st_key", "os_password", "application_credential_secret", "auth_token"}
)
_LOCAL_ONLY = ("store",)


def swift_auth_url(env: Mapping[str, str]) -> str | None:
    """The URL the environment authenticates Swift at, with the precedence of
    `backends.swift.auth.auth_from_env`: ST_AUTH (with ST_USER and ST_KEY), OS_AUTH_URL,
    OS_STORAGE_URL. None: no Swift settings (the backend then names what is missing)."""
    if env.get("ST_AUTH") and env.get("ST_USER") and env.get("ST_KEY"):
        return env["ST_AUTH"]
    return env.get("OS_AUTH_URL") or env.get("OS_STORAGE_URL") or None


def option_names() -> list[str]:
    """The `-o` names bucketfs understands (for help texts and the README's table test)."""
    return sorted(_OPTIONS)


def build_config(
    source: str,
    mountpoint: str,
    options: Sequence[str],
    foreground: bool,
    env: Mapping[str, str] | None = None,
) -> MountConfig:
    """The `MountConfig` for `bucketfs mount SOURCE MOUNTPOINT -o OPTIONS`.

    `env` (default: os.environ) supplies AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when no
    `-o endpoint` is given, as the AWS CLI does.
    """
    env = os.environ if env is None else env
    src = parse_source(source)
    if not mountpoint:
        raise ConfigError("the mountpoint is empty")
    values: dict[str, object] = {}
    for key, value in parse_options(options).items():
        if key in SECRET_OPTIONS:
            raise ConfigError(
                f"option '{key}' is not accepted: a command line is visible to every user "
                "(ps); put credentials in a remotes file (chmod 600) or the environment"
            )
        if key in IGNORED_OPTIONS or key.startswith("x-"):
            continue
        if key not in _OPTIONS:
            raise ConfigError(f"unknown option '{key}' (see 'bucketfs mount --help')")
        if key in _S3_ONLY and src.scheme != "s3":
            raise ConfigError(f"option '{key}' applies to s3:// sources only")
        if key in _LOCAL_ONLY and src.scheme != "local":
            raise ConfigError(f"option '{key}' applies to local:// sources only")
        if key in _SWIFT_ONLY and src.scheme != "swift":
            raise ConfigError(f"option '{key}' applies to swift:// sources only")
        if key in _S3_OR_SWIFT and src.scheme not in ("s3", "swift"):
            raise ConfigError(f"option '{key}' applies to s3:// and swift:// sources only")
        name, parse = _OPTIONS[key]
        values[name] = parse(key, value)
    if src.scheme == "s3" and "endpoint" not in values:
        from_env = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if from_env:
            values["endpoint"] = _endpoint("AWS_ENDPOINT_URL", from_env)
    if src.scheme == "swift" and "auth_url" not in values:
        from_env = swift_auth_url(env)
        if from_env:
            values["auth_url"] = from_env.rstrip("/")
    if values.get("debug") and "log_level" not in values:
        values["log_level"] = "DEBUG"
    return MountConfig(
        source=src,
        mountpoint=Path(os.path.abspath(os.path.expanduser(mountpoint))),
        foreground=foreground,
        **values,  # type: ignore[arg-type]
    )
