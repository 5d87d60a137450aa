"""`bucketfs.app.notify`: the sd_notify protocol over a socket the test listens on."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketfs.app.cli import JOURNAL_LOG_FORMAT, foreground_log_format
from bucketfs.app.daemon import LOG_FORMAT
from bucketfs.app.notify import format_message, notify, socket_address


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    with sock:
        yield sock, path


def test_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@bucketfs/x") == b"\0bucketfs/x"
    assert socket_address("@") is None
    assert socket_address("relative/path") is None
    assert socket_address("vsock:2:1234") is None


def test_format_keeps_order_and_strips_newlines() -> None:
    message = format_message({"READY": 1, "STATUS": "two\nlines", "ERRNO": True})
    assert message == b"READY=1\nSTATUS=two lines\nERRNO=1\n"


@pytest.mark.parametrize("key", ["", "ready", "A=B", "A B"])
def test_format_refuses_bad_field_names(key: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        format_message({key: 1})


def test_no_socket_does_nothing() -> None:
    assert notify(env={}, READY=1) is False
    assert notify(env={"NOTIFY_SOCKET": "not-a-socket"}, READY=1) is False


def test_no_fields_sends_nothing(listener: tuple[socket.socket, str]) -> None:
    _, path = listener
    assert notify(env={"NOTIFY_SOCKET": path}) is False


def test_messages_arrive_in_order(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert notify(env=env, STATUS="mounting s3://b on /mnt")
    assert notify(env=env, READY=1, STATUS="mounted s3://b on /mnt")
    assert notify(env=env, STOPPING=1)
    assert [sock.recv(4096) for _ in range(3)] == [
        b"STATUS=mounting s3://b on /mnt\n",
        b"READY=1\nSTATUS=mounted s3://b on /mnt\n",
        b"STOPPING=1\n",
    ]


def test_abstract_namespace() -> None:
    name = f"bucketfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert notify(env={"NOTIFY_SOCKET": "@" + name}, READY=1)
        assert sock.recv(4096) == b"READY=1\n"


def test_reads_os_environ(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify(STATUS="x")
    assert sock.recv(4096) == b"STATUS=x\n"


def test_nobody_listening_is_not_an_error(tmp_path: Path) -> None:
    assert notify(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}, READY=1) is False


def test_foreground_log_format_under_the_journal() -> None:
    """Under systemd ($JOURNAL_STREAM names stderr) the journal's own time stamp is enough."""
    st = os.fstat(sys.stderr.fileno())
    assert foreground_log_format({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == (
        JOURNAL_LOG_FORMAT
    )
    assert foreground_log_format({"JOURNAL_STREAM": "1:2"}) == LOG_FORMAT
    assert foreground_log_format({}) == LOG_FORMAT
    assert "asctime" not in JOURNAL_LOG_FORMAT
