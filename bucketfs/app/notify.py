"""Telling systemd how the mount is doing: the sd_notify protocol, without libsystemd.

A service with `Type=notify` finds the socket to talk to in `$NOTIFY_SOCKET`: a path to a Unix
datagram socket, or a name in the abstract namespace when it starts with `@`. Each message is one
datagram of `KEY=VALUE` lines (`READY=1`, `STOPPING=1`, `STATUS=free text`, ...); see
sd_notify(3).

Invariants: `notify` never raises and never blocks (a datagram systemd cannot take right now is
dropped and logged at DEBUG: only READY=1 matters, and systemd's queue is large); without
`$NOTIFY_SOCKET` it does nothing, so the daemon behaves the same outside systemd; fields are sent
in the order they are given, in one datagram; a value never carries a newline (it would start a
new field), so newlines become spaces. The mount (`mount.py`) may call `notify(STATUS=...)` at any
time, e.g. with the bytes still to upload.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_VAR = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | bytes | None:
    """The address for `socket.sendto` named by a `$NOTIFY_SOCKET` value, None if unusable.

    `@name` is `\\0name` in the abstract namespace; an absolute path is a socket file. (systemd
    also accepts `vsock:` addresses for virtual machines; bucketfs has no use for them.)
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def format_message(fields: Mapping[str, object]) -> bytes:
    """`KEY=VALUE` lines, in order; newlines in values become spaces."""
    lines = []
    for key, value in fields.items():
        if not key or not key.replace("_", "").isalnum() or not key.isupper():
            raise ValueError(f"bad sd_notify field name {key!r}")
        text = str(int(value)) if isinstance(value, bool) else str(value)
        lines.append(f"{key}={text.replace(chr(10), ' ')}")
    return ("\n".join(lines) + "\n").encode()


def notify(env: Mapping[str, str] | None = None, **fields: object) -> bool:
    """Send `fields` (e.g. `READY=1, STATUS="mounted ..."`) to systemd; True if it was sent.

    `env` (default: os.environ) is where `$NOTIFY_SOCKET` is looked up.
    """
    if not fields:
        return False
    value = (os.environ if env is None else env).get(ENV_VAR, "")
    address = socket_address(value) if value else None
    if address is None:
        if value:
            log.debug("ignoring %s=%r: not a path or an @abstract name", ENV_VAR, value)
        return False
    message = format_message(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError as exc:
        log.debug("could not notify systemd (%s): %s", value, exc)
        return False
    return True
