"""`bucketfs.app.options`: sources, every -o option, the errors that name what was wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bucketfs.app.options import (
    IGNORED_OPTIONS,
    MiB,
    MountConfig,
    Source,
    build_config,
    default_cache_root,
    default_store_root,
    option_names,
    parse_options,
    parse_size,
    parse_source,
)
from bucketfs.errors import ConfigError


def config(
    *options: str, source: str = "s3://bucket", env: dict[str, str] | None = None
) -> MountConfig:
    return build_config(source, "/mnt/x", list(options), foreground=False, env=env or {})


# --- sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://", Source("s3", None, "")),
        ("s3://bucket", Source("s3", "bucket", "")),
        ("s3://bucket/", Source("s3", "bucket", "")),
        ("s3://bucket/pre/fix", Source("s3", "bucket", "pre/fix/")),
        ("s3://bucket/pre/fix/", Source("s3", "bucket", "pre/fix/")),
        ("s3://my.bucket-1/a b/ü", Source("s3", "my.bucket-1", "a b/ü/")),
        ("local://", Source("local", None, "")),
        ("local://demo", Source("local", "demo", "")),
        ("local://demo/photos", Source("local", "demo", "photos/")),
    ],
)
def test_parse_source(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bucket", "expected s3://"),
        ("/some/path", "expected s3://"),
        ("gs://bucket", "unknown scheme 'gs'"),
        ("S3://bucket", "unknown scheme 'S3'"),
        ("s3://ab", "'ab' is not a valid bucket name"),
        ("s3://-bucket", "not a valid bucket name"),
        ("s3://buck et", "not a valid bucket name"),
        ("s3://a..b", "not a valid bucket name"),
        ("s3://" + "b" * 256, "not a valid bucket name"),
        ("s3://bucket//x", "has an empty, '.' or '..' part"),
        ("s3://bucket/a//b", "has an empty"),
        ("s3://bucket/a/../b", "has an empty"),
        ("local://demo/./x", "has an empty"),
    ],
)
def test_parse_source_refuses(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="bad source") as info:
        parse_source(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_source_str_round_trips() -> None:
    for text in ("s3://", "s3://bucket", "s3://bucket/pre/fix/", "local://demo/a/"):
        assert str(parse_source(text)) == text


# --- option syntax -------------------------------------------------------------------------


def test_parse_options_splits_commas_and_repeats() -> None:
    assert parse_options(["ro,uid=5", " gid = 7 ,,", "uid=6"]) == {
        "ro": "",
        "uid": "6",
        "gid": "7",
    }
    assert parse_options([]) == {}


def test_parse_options_refuses_nameless() -> None:
    with pytest.raises(ConfigError, match="'=1'"):
        parse_options(["=1"])


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown option 'foo'"):
        config("ro,foo=1")
    with pytest.raises(ConfigError, match="unknown option 'bar'"):
        config("bar")


@pytest.mark.parametrize("name", sorted(IGNORED_OPTIONS))
def test_fstab_options_are_ignored(name: str) -> None:
    assert config(name) == config()


def test_x_options_are_ignored() -> None:
    assert config("x-systemd.automount,x-systemd.idle-timeout=60,x-mount.mkdir") == config()


# --- every option --------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = config()
    assert cfg.source == Source("s3", "bucket", "")
    assert cfg.mountpoint == Path("/mnt/x")
    assert not cfg.foreground
    assert (cfg.endpoint, cfg.region, cfg.profile, cfg.path_style) == (None, None, None, None)
    assert cfg.store == default_store_root()
    assert (cfg.uid, cfg.gid, cfg.umask) == (os.getuid(), os.getgid(), 0o022)
    assert (cfg.file_mode, cfg.dir_mode) == (None, None)
    assert not cfg.ro
    assert not cfg.allow_other
    assert cfg.cache_dir.parent == default_cache_root()
    assert cfg.cache_dir.name.startswith("s3-bucket-")
    assert (cfg.attr_timeout, cfg.entry_timeout, cfg.dir_timeout, cfg.negative_timeout) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert (cfg.debug, cfg.log_level) == (False, "INFO")
    assert cfg.max_connections == 32
    assert cfg.part_size == 16 * MiB
    assert cfg.writeback_delay == 1.0  # the upload quiet period (issue 17)
    assert cfg.upload_defer == 5.0  # and the most it waits more for a busy mount
    assert cfg.fsname == "s3://bucket"


OPTION_CASES = [
    ("endpoint=http://127.0.0.1:8333/", "endpoint", "http://127.0.0.1:8333"),
    ("endpoint=https://s3.example.com", "endpoint", "https://s3.example.com"),
    ("region=eu-west-1", "region", "eu-west-1"),
    ("profile=backup", "profile", "backup"),
    ("addressing=path", "path_style", True),
    ("addressing=virtual", "path_style", False),
    ("addressing=auto", "path_style", None),
    ("uid=1000", "uid", 1000),
    ("gid=0", "gid", 0),
    ("umask=077", "umask", 0o077),
    ("umask=0", "umask", 0),
    ("file_mode=0640", "file_mode", 0o640),
    ("dir_mode=755", "dir_mode", 0o755),
    ("ro", "ro", True),
    ("ro=no", "ro", False),
    ("allow_other", "allow_other", True),
    ("cache_dir=/srv/cache", "cache_dir", Path("/srv/cache")),
    ("attr_timeout=2.5", "attr_timeout", 2.5),
    ("entry_timeout=0", "entry_timeout", 0.0),
    ("dir_timeout=60", "dir_timeout", 60.0),
    ("dir_attr_timeout=5", "dir_attr_timeout", 5.0),
    ("negative_timeout=0.1", "negative_timeout", 0.1),
    ("debug", "debug", True),
    ("log_level=warning", "log_level", "WARNING"),
    ("max_connections=4", "max_connections", 4),
    ("part_size=8M", "part_size", 8 * MiB),
    ("part_size=64MiB", "part_size", 64 * MiB),
    ("part_size=1G", "part_size", 1024 * MiB),
    ("part_size=10MB", "part_size", 10_000_000),
    ("part_size=5242880", "part_size", 5 * MiB),
    ("retry_timeout=2.5", "retry_timeout", 2.5),
    ("cache_size=20G", "cache_size", 20 * 1024 * MiB),
    ("block_size=4M", "block_size", 4 * MiB),
    ("block_size=4096", "block_size", 4096),
    ("max_dirty=512M", "max_dirty", 512 * MiB),
    ("transfers=64", "transfers", 64),
    ("upload_parts=4", "upload_parts", 4),
    ("meta_cache_size=0", "meta_cache_size", 0),
    ("meta_cache_size=5000", "meta_cache_size", 5000),
    ("max_nodes=0", "max_nodes", 0),
    ("max_nodes=2000", "max_nodes", 2000),
    ("writeback_delay=5", "writeback_delay", 5.0),
    ("writeback_delay=0", "writeback_delay", 0.0),
    ("upload_defer=0", "upload_defer", 0.0),
    ("upload_defer=30", "upload_defer", 30.0),
    ("noversions", "noversions", True),
    ("url_ttl=60", "url_ttl", 60),
    ("attrs=listing", "attrs", "listing"),
    ("attrs=full", "attrs", "full"),
    ("early_parts=on", "early_parts", "on"),
    ("early_parts=off", "early_parts", "off"),
    ("early_parts=auto", "early_parts", "auto"),
]


@pytest.mark.parametrize(("option", "field", "value"), OPTION_CASES)
def test_option(option: str, field: str, value: object) -> None:
    assert getattr(config(option), field) == value


def test_every_option_is_tested() -> None:
    # store, auth_url and create_tempurl_key apply to other schemes: tested in
    # test_local_store_option and tests/backends/test_swift.py
    tested = {"store", "auth_url", "create_tempurl_key"}
    tested |= {option.split("=")[0] for option, _, _ in OPTION_CASES}
    assert tested == set(option_names())


def test_store_option_for_local(tmp_path: Path) -> None:
    cfg = config(f"store={tmp_path}", source="local://demo")
    assert cfg.store == tmp_path
    assert cfg.fsname == "local://demo"


def test_relative_paths_become_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = build_config("local://demo", "mnt", ["store=st,cache_dir=c"], True, env={})
    assert (cfg.mountpoint, cfg.store, cfg.cache_dir) == (
        tmp_path / "mnt",
        tmp_path / "st",
        tmp_path / "c",
    )
    assert cfg.foreground


def test_debug_sets_log_level_unless_given() -> None:
    assert config("debug").log_level == "DEBUG"
    assert config("debug,log_level=info").log_level == "INFO"


def test_endpoint_from_environment() -> None:
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2"}
    assert config(env=env).endpoint == "http://b:2"
    assert config(env={"AWS_ENDPOINT_URL": "http://a:1"}).endpoint == "http://a:1"
    assert config("endpoint=http://c:3", env=env).endpoint == "http://c:3"


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("umask=999", "'umask': '999'"),
        ("umask=", "option 'umask' needs a value"),
        ("file_mode=rw-r--r--", "'file_mode': 'rw-r--r--'"),
        ("dir_mode=17777", "'dir_mode': '17777'"),
        ("uid=-1", "'uid': '-1'"),
        ("uid=alice", "'uid': 'alice'"),
        ("gid=4294967295", "'gid': '4294967295'"),
        ("attr_timeout=-1", "'attr_timeout': '-1'"),
        ("entry_timeout=soon", "'entry_timeout': 'soon'"),
        ("dir_timeout=inf", "'dir_timeout': 'inf'"),
        ("negative_timeout=nan", "'negative_timeout': 'nan'"),
        ("max_connections=0", "'max_connections': '0'"),
        ("block_size=3M", "'block_size': '3M'"),
        ("block_size=1K", "'block_size': '1K'"),
        ("cache_size=0", "'cache_size': '0'"),
        ("max_dirty=lots", "'max_dirty': 'lots'"),
        ("transfers=0", "'transfers': '0'"),
        ("meta_cache_size=-1", "'meta_cache_size': '-1'"),
        ("writeback_delay=-1", "'writeback_delay': '-1'"),
        ("upload_defer=soon", "'upload_defer': 'soon'"),
        ("url_ttl=0", "'url_ttl': '0'"),
        ("url_ttl=1h", "'url_ttl': '1h'"),
        ("attrs=head", "'attrs': 'head'"),
        ("early_parts=yes", "'early_parts': 'yes'"),
        ("retry_timeout=never", "'retry_timeout': 'never'"),
        ("max_connections=many", "'max_connections': 'many'"),
        ("part_size=1M", "'part_size': '1M'"),
        ("part_size=6G", "'part_size': '6G'"),
        ("part_size=16X", "'part_size': '16X'"),
        ("part_size=MiB", "'part_size': 'MiB'"),
        ("addressing=dns", "'addressing': 'dns'"),
        ("log_level=loud", "'log_level': 'loud'"),
        ("endpoint=s3.example.com", "'endpoint': 's3.example.com'"),
        ("endpoint", "option 'endpoint' needs a value"),
        ("region=", "option 'region' needs a value"),
        ("ro=maybe", "'ro': 'maybe'"),
        ("cache_dir=", "option 'cache_dir' needs a value"),
    ],
)
def test_bad_values_are_named(option: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(option)
    assert fragment in str(info.value)


def test_options_for_the_other_scheme_are_refused() -> None:
    with pytest.raises(ConfigError, match="'store' applies to local:// sources only"):
        config("store=/tmp")
    with pytest.raises(ConfigError, match="'endpoint' applies to s3:// sources only"):
        config("endpoint=http://x", source="local://demo")


def test_parse_size() -> None:
    assert parse_size("s", "0") == 0
    assert parse_size("s", "1k") == 1024
    assert parse_size("s", "1KiB") == 1024
    assert parse_size("s", "2 GB") == 2_000_000_000
    assert parse_size("s", "1T") == 1024**4


# --- defaults that depend on who runs ------------------------------------------------------


def test_default_roots_for_root() -> None:
    assert default_store_root(0, {}) == Path("/var/lib/bucketfs/store")
    assert default_cache_root(0, {"XDG_CACHE_HOME": "/x"}) == Path("/var/cache/bucketfs")


def test_default_roots_for_a_user() -> None:
    env = {"HOME": "/home/u"}
    assert default_store_root(1000, env) == Path("/home/u/.local/share/bucketfs/store")
    assert default_cache_root(1000, env) == Path("/home/u/.cache/bucketfs")
    env |= {"XDG_DATA_HOME": "/d", "XDG_CACHE_HOME": "/c"}
    assert default_store_root(1000, env) == Path("/d/bucketfs/store")
    assert default_cache_root(1000, env) == Path("/c/bucketfs")
    env |= {"XDG_CACHE_HOME": "relative"}  # ignored, as the XDG spec says
    assert default_cache_root(1000, env) == Path("/home/u/.cache/bucketfs")


def test_defaults_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = config(source="local://demo/sub")
    assert cfg.store == Path("/var/lib/bucketfs/store")
    assert cfg.cache_dir.parent == Path("/var/cache/bucketfs")


def test_cache_dir_is_distinct_per_source_endpoint_and_store() -> None:
    dirs = {
        config().cache_dir,
        config(source="s3://bucket/a").cache_dir,
        config(source="s3://bucket/b").cache_dir,
        config(source="s3://").cache_dir,
        config("endpoint=http://other:1").cache_dir,
        config(source="local://bucket").cache_dir,
        config("store=/elsewhere", source="local://bucket").cache_dir,
    }
    assert len(dirs) == 7
    assert config().cache_dir == config().cache_dir  # and stable


def test_mountconfig_built_directly_keeps_its_invariants() -> None:
    cfg = MountConfig(Source("s3", "b", "x,y/"), Path("rel"))
    assert cfg.mountpoint.is_absolute()
    assert cfg.cache_dir.is_absolute()
    assert cfg.cache_dir.parent == default_cache_root()
    assert cfg.fsname == "s3://b/x%2Cy/"
    assert "," not in cfg.fsname
