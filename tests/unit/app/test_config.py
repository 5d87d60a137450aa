"""`bucketfs.app.config`: remotes files, mount files, permissions, secrets kept out of sight."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from bucketfs.app.config import (
    Remote,
    build_mount_config,
    load_mount_file,
    load_remotes,
    remote_source,
    remotes_paths,
    user_remotes_path,
)
from bucketfs.app.options import MountConfig, build_config
from bucketfs.errors import ConfigError

SECRET = "s3cr3t-Value/with+chars%and#more"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def mount_config(
    source: str | None,
    *options: str,
    files: list[Path],
    mountpoint: str | None = "/mnt/x",
    config_file: Path | None = None,
) -> MountConfig:
    return build_mount_config(
        source,
        mountpoint,
        list(options),
        False,
        config_file=config_file,
        env={},
        remote_files=files,
    )


S3_REMOTE = """
    [sw]
    type = s3
    endpoint = http://127.0.0.1:8333/
    region = eu-west-1
    addressing = path
    options = allow_other,umask=077
    attr_timeout = 5
"""


# --- remotes -------------------------------------------------------------------------------


def test_remote_source() -> None:
    assert remote_source("sw:bucket/pre/fix") == ("sw", "bucket/pre/fix")
    assert remote_source("sw:") == ("sw", "")
    assert remote_source("s3://bucket") is None
    assert remote_source("/abs/path") is None
    assert remote_source("no-colon") is None


def test_s3_remote(tmp_path: Path) -> None:
    files = [write(tmp_path / "remotes.conf", S3_REMOTE, 0o644)]
    cfg = mount_config("sw:photos/2024", "ro", files=files)
    assert str(cfg.source) == "s3://photos/2024/"
    assert cfg.endpoint == "http://127.0.0.1:8333"
    assert cfg.region == "eu-west-1"
    assert cfg.path_style is True
    assert cfg.allow_other
    assert cfg.umask == 0o077
    assert cfg.attr_timeout == 5.0
    assert cfg.ro
    assert cfg.fsname == "sw:photos/2024"  # as in fstab, so `mount -a` sees it mounted
    assert cfg.secret_access_key is None


def test_command_line_wins_over_remote(tmp_path: Path) -> None:
    files = [write(tmp_path / "remotes.conf", S3_REMOTE, 0o644)]
    cfg = mount_config("sw:bk1", "umask=022,attr_timeout=9", files=files)
    assert (cfg.umask, cfg.attr_timeout) == (0o022, 9.0)


def test_local_remote(tmp_path: Path) -> None:
    text = f"""
        [here]
        type = local
        store = {tmp_path}/store
    """
    cfg = mount_config("here:demo", files=[write(tmp_path / "r.conf", text, 0o644)])
    assert str(cfg.source) == "local://demo"
    assert cfg.store == tmp_path / "store"


def test_all_buckets_of_a_remote(tmp_path: Path) -> None:
    cfg = mount_config("sw:", files=[write(tmp_path / "r.conf", S3_REMOTE)])
    assert cfg.source.bucket is None


def test_later_file_replaces_a_section(tmp_path: Path) -> None:
    system = write(tmp_path / "etc.conf", S3_REMOTE, 0o644)
    user = write(tmp_path / "user.conf", "[sw]\ntype = s3\nregion = ap-south-1\n")
    remotes = load_remotes([system, tmp_path / "missing.conf", user])
    assert remotes["sw"].options == ("region=ap-south-1",)
    assert remotes["sw"].path == user


def test_unknown_remote_names_the_files(tmp_path: Path) -> None:
    files = [write(tmp_path / "r.conf", S3_REMOTE), tmp_path / "missing.conf"]
    with pytest.raises(ConfigError) as info:
        mount_config("nope:b", files=files)
    assert str(info.value) == (
        f"unknown remote 'nope' in source 'nope:b' (no [nope] section in {files[0]}, {files[1]})"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[r]\nendpoint = http://x\n", "[r]: 'type' must be one of"),
        ("[r]\ntype = gcs\n", "[r]: 'type' must be one of"),
        ("[r]\ntype = s3\nbogus = 1\n", "[r]: unknown key 'bogus'"),
        ("[r]\ntype = s3\numask = 999\n", "[r]: bad value for option 'umask': '999'"),
        ("[r]\ntype = s3\noptions = nope\n", "[r]: unknown option 'nope'"),
        ("[r]\ntype = local\nendpoint = http://x\n", "[r]: option 'endpoint' applies to s3"),
        ("[bad name]\ntype = s3\n", "a remote's name is"),
        ("[mount]\nsource = s3://bkt\n", "[mount] belongs in a mount file"),
        ("[r]\ntype = s3\naccess_key_id = AK\n", "give both access_key_id and secret_access_key"),
        (
            "[r]\ntype = s3\nprofile = p\naccess_key_id = AK\nsecret_access_key = S\n",
            "either 'profile' or keys",
        ),
        ("[r]\ntype = local\naccess_key_id = A\nsecret_access_key = S\n", "type = s3 only"),
        ("[r]\ntype = s3\nsecret_access_key =\n", "'secret_access_key' is empty"),
    ],
)
def test_bad_remote(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "r.conf", text)
    with pytest.raises(ConfigError, match=r"^" + str(path).replace(".", r"\.")) as info:
        load_remotes([path])
    assert message in str(info.value)


def test_user_remotes_path() -> None:
    assert user_remotes_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/bucketfs/remotes.conf")
    assert user_remotes_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/bucketfs/remotes.conf"
    )
    assert remotes_paths({"HOME": "/h"})[0] == Path("/etc/bucketfs/remotes.conf")


# --- credentials and permissions -----------------------------------------------------------

CREDS = f"""
    [sw]
    type = s3
    endpoint = http://127.0.0.1:8333
    access_key_id = AKIDEXAMPLE
    secret_access_key = {SECRET}
    session_token = token-{SECRET}
"""


def test_credentials_from_a_private_file(tmp_path: Path) -> None:
    cfg = mount_config("sw:bkt", files=[write(tmp_path / "r.conf", CREDS, 0o600)])
    assert cfg.access_key_id == "AKIDEXAMPLE"
    assert cfg.secret_access_key == SECRET  # '%' and '#' are kept: no interpolation
    assert cfg.session_token == f"token-{SECRET}"
    assert SECRET not in repr(cfg)
    assert "AKIDEXAMPLE" not in repr(cfg)


def test_remote_repr_hides_credentials(tmp_path: Path) -> None:
    remote = load_remotes([write(tmp_path / "r.conf", CREDS)])["sw"]
    assert isinstance(remote, Remote)
    assert SECRET not in repr(remote)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o400 | 0o004])
def test_credentials_in_a_readable_file_are_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "r.conf", CREDS, mode)
    with pytest.raises(ConfigError) as info:
        mount_config("sw:bkt", files=[path])
    message = str(info.value)
    assert message == (
        f"{path} holds credentials but other users can read it (mode {mode & 0o777:04o}): "
        f"chmod 600 {path}"
    )
    assert SECRET not in message


def test_a_loose_file_is_refused_even_for_another_remote(tmp_path: Path) -> None:
    path = write(tmp_path / "r.conf", S3_REMOTE + CREDS.replace("[sw]", "[other]"), 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        mount_config("sw:bkt", files=[path])


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_file_others_can_change_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "r.conf", S3_REMOTE, mode)
    with pytest.raises(ConfigError, match=rf"can be changed by other users .*chmod go-w {path}"):
        load_remotes([path])


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    """A file of uid 4242 read by uid 4243 (the check takes `euid`; chown needs root)."""
    path = write(tmp_path / "r.conf", S3_REMOTE, 0o644)
    if os.geteuid() == 0:
        os.chown(path, 4242, -1)
    owner = path.stat().st_uid
    with pytest.raises(ConfigError, match=f"belongs to uid {owner}, not to you or root: chown"):
        load_remotes([path], euid=owner + 1 if owner else 4243)
    assert load_remotes([path], euid=owner)["sw"].scheme == "s3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"[sw]\ntype = s3\n{SECRET}\n", "line 3: expected '[section]' or 'key = value'"),
        (f"secret_access_key = {SECRET}\n", "line 1: a setting before the first [section]"),
        (
            f"[sw]\ntype = s3\nsecret_access_key = {SECRET}\nsecret_access_key = {SECRET}\n",
            "line 4: 'secret_access_key' appears twice in [sw]",
        ),
        ("[sw]\ntype = s3\n[sw]\n", "line 3: [sw] appears twice"),
    ],
)
def test_parse_errors_never_quote_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "r.conf", text)
    with pytest.raises(ConfigError) as info:
        load_remotes([path])
    assert str(info.value) == f"{path}: {message}"
    assert SECRET not in str(info.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .* does not exist"):
        load_mount_file(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_mount_file(tmp_path)
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b"[r]\ntype = s3\nregion = \xe9\n")
    with pytest.raises(ConfigError, match="is not valid UTF-8"):
        load_remotes([bad])


@pytest.mark.parametrize("key", ["secret_access_key", "access_key_id", "secret_key"])
def test_secrets_on_the_command_line_are_refused(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("s3://bkt", "/mnt", [f"ro,{key}={SECRET}"], False, env={})
    assert f"option '{key}' is not accepted" in str(info.value)
    assert "remotes file (chmod 600) or the environment" in str(info.value)
    assert SECRET not in str(info.value)


# --- mount files ---------------------------------------------------------------------------


def test_mount_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "photos.conf",
        f"""
        [mount]
        source = sw:photos
        mountpoint = /mnt/photos
        options = ro,attr_timeout=3
        {CREDS}
        """,
    )
    system = write(tmp_path / "remotes.conf", S3_REMOTE, 0o644)  # its [sw] is not used
    cfg = mount_config(None, "attr_timeout=4", files=[system], mountpoint=None, config_file=path)
    assert str(cfg.source) == "s3://photos"
    assert cfg.mountpoint == Path("/mnt/photos")
    assert cfg.ro
    assert cfg.attr_timeout == 4.0
    assert cfg.region is None  # the mount file's own [sw], not the system file's
    assert cfg.secret_access_key == SECRET
    other = mount_config("s3://other", files=[], mountpoint="/mnt/o", config_file=path)
    assert (str(other.source), other.mountpoint) == ("s3://other", Path("/mnt/o"))


def test_mount_file_using_remotes_files(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[mount]\nsource = sw:bkt\nmountpoint = /mnt/b\n", 0o644)
    cfg = mount_config(
        None, files=[write(tmp_path / "r.conf", S3_REMOTE)], mountpoint=None, config_file=path
    )
    assert cfg.region == "eu-west-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sw]\ntype = s3\n", "no [mount] section"),
        ("[mount]\nsource = s3://bkt\nmountpont = /x\n", "[mount]: unknown key 'mountpont'"),
        ("[mount]\nmountpoint = /x\n", "no SOURCE given (nor in"),
        ("[mount]\nsource = s3://bkt\n", "no MOUNTPOINT given (nor in"),
    ],
)
def test_bad_mount_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "m.conf", text)
    with pytest.raises(ConfigError, match=None) as info:
        mount_config(None, files=[], mountpoint=None, config_file=path)
    assert message in str(info.value)
