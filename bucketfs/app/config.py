"""Configuration files: named remotes, and mount files for systemd units.

A *remotes file* is INI: one section per remote, so `bucketfs mount NAME:BUCKET/PREFIX MP`
means `TYPE://BUCKET/PREFIX` with the remote's settings::

    [photos]
    type = s3                      # s3, swift or local (options.SCHEMES)
    endpoint = https://s3.example.com
    region = eu-central-1
    profile = work                 # or access_key_id + secret_access_key (+ session_token)
    options = allow_other,uid=1000 # default -o options; any -o name also works as a key

Remotes come from `/etc/bucketfs/remotes.conf`, then `$XDG_CONFIG_HOME/bucketfs/remotes.conf`
(`~/.config/...`); a section in a later file replaces the section of the same name.

A *mount file* (`/etc/bucketfs/NAME.conf`, read by `bucketfs@NAME.service` through
`bucketfs mount --config FILE`) has a `[mount]` section (`source`, `mountpoint`, `options`)
and may define remotes of its own, which win over the remotes files.

Invariants:
- every config file belongs to the caller or root and is not writable by group or others (else
  someone else could point your mount, and your credentials, at their server);
- a credential (`access_key_id`, `secret_access_key`, `session_token`) is read only from a file
  readable by its owner alone; any other file holding one is refused with a message that names
  the file and the fix (`chmod 600 FILE`);
- no credential value ever appears in a message, a log line or a `repr`: parse errors name the
  file and the line number, never the line's text;
- defaults from a remote come before the command line's `-o` options (a later option wins);
- everything a remote says is validated when its file is read, with errors that name the file
  and the section.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bucketfs.app import options as opts
from bucketfs.errors import ConfigError

SYSTEM_DIR = Path("/etc/bucketfs")
SYSTEM_REMOTES = SYSTEM_DIR / "remotes.conf"
CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "session_token")
MOUNT_SECTION = "mount"

_REMOTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: `NAME:` or `NAME:BUCKET[/PREFIX]` (a URL has `://` and is no remote)
_REMOTE_SOURCE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<rest>(?!//).*)$")
_NO_DEFAULT_SECTION = "\0"  # configparser's [DEFAULT] magic is off: every section is explicit


@dataclass(frozen=True, slots=True)
class Remote:
    """One `[NAME]` section of a remotes file or a mount file."""

    name: str
    scheme: str
    path: Path  # the file it came from, for messages
    options: tuple[str, ...] = ()  # "key=value" items, before the command line's -o
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class MountFile:
    """A mount file: its `[mount]` section and the remotes it defines."""

    path: Path
    source: str | None
    mountpoint: str | None
    options: tuple[str, ...]
    remotes: Mapping[str, Remote]


def user_remotes_path(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_CONFIG_HOME/bucketfs/remotes.conf, else ~/.config/bucketfs/remotes.conf."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "bucketfs" / "remotes.conf"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config" / "bucketfs" / "remotes.conf"


def remotes_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """The remotes files, in the order they are read (a later one wins)."""
    return [SYSTEM_REMOTES, user_remotes_path(env)]


# --- reading a file ------------------------------------------------------------------------


def read_ini(path: Path, *, euid: int | None = None) -> configparser.ConfigParser:
    """Parse `path`, refusing files others can change and credentials others can read."""
    euid = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    st = os.fstat(fd)  # the file we read, not what the name points to later
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"config file {path} is not a regular file")
    with os.fdopen(fd, encoding="utf-8", errors="strict") as f:
        if st.st_uid not in (euid, 0):
            raise ConfigError(
                f"config file {path} belongs to uid {st.st_uid}, not to you or root: "
                f"chown {euid} {path}"
            )
        if st.st_mode & 0o022:
            raise ConfigError(
                f"config file {path} can be changed by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod go-w {path}"
            )
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not valid UTF-8") from None
    parser = configparser.ConfigParser(
        interpolation=None, default_section=_NO_DEFAULT_SECTION, strict=True
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}: '{exc.option}' appears twice in [{exc.section}]"
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: [{exc.section}] appears twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(
            f"{path}: line {exc.lineno}: a setting before the first [section]"
        ) from None
    except configparser.ParsingError as exc:  # its message quotes the line: never show it
        lineno = exc.errors[0][0] if exc.errors else 0
        raise ConfigError(f"{path}: line {lineno}: expected '[section]' or 'key = value'") from None
    except configparser.Error:
        raise ConfigError(f"{path}: not an INI file") from None
    if any(k in CREDENTIAL_KEYS for s in parser.sections() for k in parser[s]):
        _check_private(path, st)
    return parser


def _check_private(path: Path, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds credentials but other users can read it (mode {mode:04o}): "
            f"chmod 600 {path}"
        )


# --- remotes -------------------------------------------------------------------------------


def parse_remote(path: Path, name: str, section: Mapping[str, str]) -> Remote:
    """One section as a `Remote`, fully validated (errors name the file and the section)."""
    where = f"{path}: [{name}]"
    if not _REMOTE_NAME.match(name) or name == MOUNT_SECTION:
        raise ConfigError(
            f"{where}: a remote's name is letters, digits, '_', '.' or '-' (and not 'mount')"
        )
    scheme = section.get("type", "")
    if scheme not in opts.SCHEMES:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(opts.SCHEMES)}")
    items: list[str] = []
    creds: dict[str, str] = {}
    known = set(opts.option_names())
    for key, value in section.items():
        if key == "type":
            continue
        if key in CREDENTIAL_KEYS:
            if not value:
                raise ConfigError(f"{where}: '{key}' is empty")
            creds[key] = value
        elif key == "options":
            items.extend(i for i in value.split(",") if i.strip())
        elif key in known:
            items.append(f"{key}={value}" if value else key)
        else:
            raise ConfigError(f"{where}: unknown key '{key}'")
    if creds:
        if scheme != "s3":
            raise ConfigError(f"{where}: credentials apply to type = s3 only")
        if "access_key_id" not in creds or "secret_access_key" not in creds:
            raise ConfigError(f"{where}: give both access_key_id and secret_access_key")
        if any(i.split("=", 1)[0].strip() == "profile" for i in items):
            raise ConfigError(f"{where}: give either 'profile' or keys, not both")
    try:  # every value checked now, by the same code as the command line's
        opts.build_config(f"{scheme}://", "/", items, foreground=False, env={})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Remote(
        name=name,
        scheme=scheme,
        path=path,
        options=tuple(items),
        access_key_id=creds.get("access_key_id"),
        secret_access_key=creds.get("secret_access_key"),
        session_token=creds.get("session_token"),
    )


def load_remotes(paths: Sequence[Path], *, euid: int | None = None) -> dict[str, Remote]:
    """The remotes of every existing file in `paths`; a later file's section wins."""
    remotes: dict[str, Remote] = {}
    for path in paths:
        if not path.exists():
            continue
        parser = read_ini(path, euid=euid)
        for name in parser.sections():
            if name == MOUNT_SECTION:
                raise ConfigError(
                    f"{path}: [mount] belongs in a mount file (bucketfs mount --config FILE)"
                )
            remotes[name] = parse_remote(path, name, parser[name])
    return remotes


def load_mount_file(path: Path, *, euid: int | None = None) -> MountFile:
    """A mount file: `[mount]` with source, mountpoint and options, plus remotes."""
    parser = read_ini(path, euid=euid)
    if MOUNT_SECTION not in parser:
        raise ConfigError(f"{path}: no [mount] section (with source = ... and mountpoint = ...)")
    section = parser[MOUNT_SECTION]
    for key in section:
        if key not in ("source", "mountpoint", "options"):
            raise ConfigError(f"{path}: [mount]: unknown key '{key}'")
    remotes = {
        name: parse_remote(path, name, parser[name])
        for name in parser.sections()
        if name != MOUNT_SECTION
    }
    return MountFile(
        path=path,
        source=section.get("source") or None,
        mountpoint=section.get("mountpoint") or None,
        options=tuple(section.get("options", "").split(",")),
        remotes=remotes,
    )


def remote_source(text: str) -> tuple[str, str] | None:
    """(remote name, the rest) for `NAME:BUCKET/PREFIX`, None for a URL like `s3://...`."""
    match = _REMOTE_SOURCE.match(text)
    if match is None or "://" in text:
        return None
    return match["name"], match["rest"]


# --- the whole mount configuration ----------------------------------------------------------


def build_mount_config(
    source: str | None,
    mountpoint: str | None,
    options: Sequence[str],
    foreground: bool,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    remote_files: Sequence[Path] | None = None,
    euid: int | None = None,
) -> opts.MountConfig:
    """The `MountConfig` for the command line, a mount file and the remotes files.

    SOURCE and MOUNTPOINT on the command line win over the mount file's; options apply in the
    order remote, mount file, command line. `remote_files` defaults to `remotes_paths(env)`.
    """
    mount_file = load_mount_file(config_file, euid=euid) if config_file else None
    all_options: list[str] = []
    if mount_file is not None:
        source = source or mount_file.source
        mountpoint = mountpoint or mount_file.mountpoint
        all_options.extend(mount_file.options)
    where = f" (nor in {config_file})" if config_file else ""
    if not source:
        raise ConfigError(f"no SOURCE given{where}")
    if not mountpoint:
        raise ConfigError(f"no MOUNTPOINT given{where}")
    all_options.extend(options)
    remote = None
    named = remote_source(source)
    if named is not None:
        name, rest = named
        remotes: dict[str, Remote] = {}
        files = remotes_paths(env) if remote_files is None else list(remote_files)
        if mount_file is None or name not in mount_file.remotes:
            remotes = load_remotes(files, euid=euid)
        if mount_file is not None:
            remotes.update(mount_file.remotes)
        remote = remotes.get(name)
        if remote is None:
            searched = [str(p) for p in files] + ([str(config_file)] if config_file else [])
            raise ConfigError(
                f"unknown remote '{name}' in source '{source}' "
                f"(no [{name}] section in {', '.join(searched)})"
            )
        url = f"{remote.scheme}://{rest}"
        all_options[:0] = remote.options
    else:
        url = source
    cfg = opts.build_config(url, mountpoint, all_options, foreground, env=env)
    changes: dict[str, object] = {"fsname": source}  # as in fstab: `mount -a` recognises it
    if remote is not None and remote.secret_access_key is not None:
        changes.update(
            access_key_id=remote.access_key_id,
            secret_access_key=remote.secret_access_key,
            session_token=remote.session_token,
        )
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
