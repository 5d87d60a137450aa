"""`bucketfs.core.attrs`: POSIX attributes in object metadata, and which names are file names."""

from __future__ import annotations

import stat

import pytest

from bucketfs.core.attrs import (
    NAME_MAX,
    PosixAttrs,
    check_new_name,
    format_mtime,
    parse_posix,
    posix_metadata,
    valid_name,
)
from bucketfs.core.nodes import Kind
from bucketfs.errors import InvalidArgument, NameTooLong

# --- parse_posix -------------------------------------------------------------------------


def test_parse_posix_of_s3fs_metadata() -> None:
    attrs = parse_posix({"mode": "33152", "uid": "1234", "gid": "5678", "mtime": "1700000000.5"})
    assert attrs == PosixAttrs(Kind.FILE, 0o600, 1234, 5678, 1700000000.5)


def test_parse_posix_without_metadata() -> None:
    assert parse_posix({}) == PosixAttrs(None, None, None, None, None)


@pytest.mark.parametrize(
    ("mode", "kind", "perm"),
    [
        (stat.S_IFREG | 0o644, Kind.FILE, 0o644),
        (stat.S_IFDIR | 0o755, Kind.DIR, 0o755),
        (stat.S_IFLNK | 0o777, Kind.LINK, 0o777),
        (stat.S_IFREG | 0o4755, Kind.FILE, 0o4755),  # setuid kept
        (0o644, None, 0o644),  # permission bits only: the type is not said
        (stat.S_IFIFO | 0o600, Kind.FIFO, 0o600),  # special files, as s3fs stores them
        (stat.S_IFSOCK | 0o600, Kind.SOCKET, 0o600),
        (stat.S_IFCHR | 0o620, Kind.CHAR, 0o620),
        (stat.S_IFBLK | 0o660, Kind.BLOCK, 0o660),
        (0o170000 | 0o600, None, 0o600),  # a type no file has
    ],
)
def test_parse_posix_mode_and_type(mode: int, kind: Kind | None, perm: int) -> None:
    attrs = parse_posix({"mode": str(mode)})
    assert (attrs.kind, attrs.mode) == (kind, perm)


@pytest.mark.parametrize(
    "mode", ["", "abc", "0x1a4", "-1", "12.5", str(1 << 32), "99999999999999999999"]
)
def test_parse_posix_ignores_unreadable_modes(mode: str) -> None:
    attrs = parse_posix({"mode": mode})
    assert (attrs.kind, attrs.mode) == (None, None)


def test_parse_posix_strips_whitespace() -> None:
    attrs = parse_posix({"mode": " 33188\n", "uid": " 7 ", "gid": "8 ", "mtime": " 12.5 "})
    assert attrs == PosixAttrs(Kind.FILE, 0o644, 7, 8, 12.5)


@pytest.mark.parametrize("value", ["-1", "abc", "", "1.5", "1e3"])
def test_parse_posix_ignores_unreadable_ids(value: str) -> None:
    attrs = parse_posix({"uid": value, "gid": value})
    assert (attrs.uid, attrs.gid) == (None, None)


def test_parse_posix_keeps_large_ids() -> None:
    attrs = parse_posix({"uid": "4294967294", "gid": "65534"})
    assert (attrs.uid, attrs.gid) == (4294967294, 65534)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1700000000.0),
        ("1700000000.123456789", 1700000000.123456789),
        ("0", 0.0),
        ("-86400.25", -86400.25),  # before 1970 is a valid time
    ],
)
def test_parse_posix_mtime(value: str, expected: float) -> None:
    assert parse_posix({"mtime": value}).mtime == expected


@pytest.mark.parametrize(
    "value", ["", "yesterday", "2023-11-14T22:13:20Z", "nan", "inf", "-inf", "1e400", "1e300"]
)
def test_parse_posix_ignores_unreadable_mtimes(value: str) -> None:
    """A value that is no usable time is ignored: nan, inf and times beyond st_mtime_ns's
    64-bit nanoseconds make `fuse_ops` fail every lookup of the file with EIO."""
    assert parse_posix({"mtime": value}).mtime is None


def test_parse_posix_ignores_other_keys() -> None:
    attrs = parse_posix({"Mode": "33188", "x-amz-meta-uid": "5", "color": "blue"})
    assert attrs == PosixAttrs(None, None, None, None, None)


# --- format_mtime and posix_metadata ----------------------------------------------------


@pytest.mark.parametrize(
    ("mtime", "text"),
    [
        (1700000000.5, "1700000000.5"),
        (1700000000.0, "1700000000"),
        (0.0, "0"),
        (10.0, "10"),
        (100.0, "100"),
        (1.25, "1.25"),
        (1e-9, "0.000000001"),
        (1e-10, "0"),
        (-1.5, "-1.5"),
        (1e20, "100000000000000000000"),
    ],
)
def test_format_mtime(mtime: float, text: str) -> None:
    assert format_mtime(mtime) == text


@pytest.mark.parametrize(
    "mtime", [1700000000.123456789, 1234567890.000001, 1.1, 0.3, 2**31 + 0.999999999]
)
def test_format_mtime_round_trips(mtime: float) -> None:
    text = format_mtime(mtime)
    assert "e" not in text.lower()
    assert float(text) == pytest.approx(mtime, abs=1e-9)
    assert parse_posix({"mtime": text}).mtime == pytest.approx(mtime, abs=1e-9)


def test_posix_metadata_round_trips_through_parse() -> None:
    st_mode = stat.S_IFDIR | 0o2750
    meta = posix_metadata(st_mode, 1000, 100, 1700000000.25)
    assert meta == {"mode": str(st_mode), "uid": "1000", "gid": "100", "mtime": "1700000000.25"}
    assert parse_posix(meta) == PosixAttrs(Kind.DIR, 0o2750, 1000, 100, 1700000000.25)


def test_atime_is_written_once_known_and_read_as_s3fs_writes_it() -> None:
    meta = posix_metadata(stat.S_IFREG | 0o644, 0, 0, 1700000000.25, 1600000000.5)
    assert meta["atime"] == "1600000000.5"
    assert parse_posix(meta).atime == 1600000000.5
    assert "atime" not in posix_metadata(stat.S_IFREG | 0o644, 0, 0, 1700000000.25)
    assert parse_posix({"atime": "1600000000"}).atime == 1600000000.0  # s3fs: whole seconds
    assert parse_posix({"atime": "soon"}).atime is None


# --- valid_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "...", ".hidden", "..x", " ", "with space", "ünïcödé", "x" * NAME_MAX, "é" * 127, "\t"],
)
def test_valid_names(name: str) -> None:
    assert valid_name(name, where=f"test/{name}")


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "/", "nul\0", "x" * (NAME_MAX + 1), "é" * 128, "\udcff", "a\ud800b"],
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name, where=f"test/{name!r}")


def test_invalid_name_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    where = "test/log-once/a//b"
    valid_name("", where=where)
    valid_name("", where=where)
    assert sum(where in r.getMessage() for r in caplog.records) == 1


# --- check_new_name -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "x" * NAME_MAX, "é" * 127, "...", ".git"])
def test_check_new_name_accepts(name: str) -> None:
    check_new_name(name)


@pytest.mark.parametrize("name", ["x" * (NAME_MAX + 1), "é" * 128, "\udcff" * 256])
def test_check_new_name_too_long(name: str) -> None:
    with pytest.raises(NameTooLong):
        check_new_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "nul\0", "\udcff", "bad\udc80name"])
def test_check_new_name_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_new_name(name)


def test_check_new_name_agrees_with_valid_name() -> None:
    """Every name the mount lets you create must be listable afterwards."""
    samples = ["a", "", ".", "..", "...", "a/b", "\0", "x" * 255, "x" * 256, "é" * 128, "\udcff"]
    for name in samples:
        try:
            check_new_name(name)
        except (InvalidArgument, NameTooLong):
            assert not valid_name(name, where=f"agree/{name!r}")
        else:
            assert valid_name(name, where=f"agree/{name!r}")
