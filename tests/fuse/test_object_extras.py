"""Expiry, upload URLs and checksums through a real mount (`setfattr`/`getfattr`, `curl`), on
the local store, SeaweedFS and Swift, checked with an independent client (boto3, Swift's API
over urllib).

- `user.bucketfs.delete_at`: Swift's `X-Delete-At`; ENOTSUP elsewhere;
- `user.bucketfs.upload_url` (a file) and `user.bucketfs.upload_url.NAME` (a directory): a URL
  `curl -T` uploads to; ENOTSUP on the local store;
- `user.bucketfs.checksum.ALG`: what the store kept (SeaweedFS: the SHA-256 bucketfs sends with
  every upload; Swift: the MD5 ETag), read by name only (never listed: a copy must not carry
  them).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import subprocess
import time
import urllib.error
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.helpers import Mount, MountFactory, S3StoreClient, StoreEnv, require_tool
from tests.support.swift_server import SwiftServer

NS = "user.bucketfs."


def refused(path: Path, name: str, value: bytes | None = None, *, remove: bool = False) -> int:
    try:
        if remove:
            os.removexattr(path, name)
        elif value is None:
            os.getxattr(path, name)
        else:
            os.setxattr(path, name, value)
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{name} on {path} was not refused")


def swift_head(server: SwiftServer, bucket: str, key: str) -> dict[str, str] | None:
    """The object's headers as Swift's API gives them (lower-case names); None if missing."""
    url, token = server.auth()
    target = f"{url}/{quote(bucket, safe='')}/{quote(key)}"
    try:
        _, headers, _ = server.request("HEAD", target, token)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return {k.lower(): v for k, v in headers.items()}


def swift_mount(store_env: StoreEnv, mount_factory: MountFactory, *extra: str) -> Mount:
    options = [*extra, "create_tempurl_key"] if store_env.kind == "swift" else list(extra)
    return mount_factory(options=options)


def iso_of(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_lines(mnt: Mount, text: str) -> list[str]:
    return [line for line in mnt.log.read_text(errors="replace").splitlines() if text in line]


# --- expiry ------------------------------------------------------------------------------------


def test_delete_at(
    store_env: StoreEnv, mount_factory: MountFactory, request: pytest.FixtureRequest
) -> None:
    mnt = mount_factory()
    assert mnt.bucket is not None
    f = mnt.path / "expiring.txt"
    f.write_bytes(b"temporary")
    mnt.flush()
    name = NS + "delete_at"
    if store_env.kind != "swift":
        assert refused(f, name, b"+60") == errno.EOPNOTSUPP
        assert len(log_lines(mnt, "bucket lifecycle rules")) == 1
        assert refused(f, name) == errno.ENODATA
        return
    server: SwiftServer = request.getfixturevalue("swift")
    before = int(time.time())
    os.setxattr(f, name, b"+3600")
    shown = os.getxattr(f, name).decode()
    when = int(datetime.fromisoformat(shown).timestamp())
    assert before + 3600 <= when <= int(time.time()) + 3601
    assert shown == iso_of(when)
    assert name in os.listxattr(f)  # a copy carries it (cp -a of an expiring file expires)
    headers = swift_head(server, mnt.bucket, "expiring.txt")
    assert headers is not None
    assert headers["x-delete-at"] == str(when)
    # an ISO 8601 time, and user metadata changed later keeps it (a POST replaces everything)
    os.setxattr(f, name, iso_of(before + 7200).encode())
    os.setxattr(f, "user.owner", b"alice")
    headers = swift_head(server, mnt.bucket, "expiring.txt")
    assert headers is not None
    assert headers["x-delete-at"] == str(before + 7200)
    assert headers["x-object-meta-owner"] == "alice"
    # garbage and the past: EINVAL, one line each in the log, nothing changed
    assert refused(f, name, b"next tuesday") == errno.EINVAL
    assert refused(f, name, b"2001-01-01T00:00:00Z") == errno.EINVAL
    assert refused(f, name, b"+0") == errno.EINVAL
    assert len(log_lines(mnt, "not an ISO 8601 time")) == 1
    assert len(log_lines(mnt, "the time is not in the future")) == 2
    assert os.getxattr(f, name) == iso_of(before + 7200).encode()
    # removing it cancels the deletion
    os.removexattr(f, name)
    headers = swift_head(server, mnt.bucket, "expiring.txt")
    assert headers is not None
    assert "x-delete-at" not in headers
    assert headers["x-object-meta-owner"] == "alice"
    assert name not in os.listxattr(f)
    assert refused(f, name) == errno.ENODATA
    assert refused(f, name, remove=True) == errno.ENODATA
    # a directory has no expiry
    (mnt.path / "d").mkdir()
    assert refused(mnt.path / "d", name, b"+60") == errno.EOPNOTSUPP
    # set on a file not uploaded yet: it goes up with the content; then Swift deletes it
    g = mnt.path / "soon.txt"
    g.write_bytes(b"gone soon")
    os.setxattr(g, name, b"+4")
    mnt.flush()
    headers = swift_head(server, mnt.bucket, "soon.txt")
    assert headers is not None
    assert "x-delete-at" in headers
    deadline = int(headers["x-delete-at"])
    time.sleep(max(0.0, deadline - time.time()) + 1.5)
    assert swift_head(server, mnt.bucket, "soon.txt") is None


# --- upload URLs -------------------------------------------------------------------------------


def curl_put(url: str, body: Path) -> str:
    curl = require_tool("curl")
    done = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(body), url],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done.stdout


def test_upload_url_with_curl(
    store_env: StoreEnv, mount_factory: MountFactory, tmp_path: Path
) -> None:
    mnt = swift_mount(store_env, mount_factory)
    d = mnt.path / "inbox"
    d.mkdir()
    f = d / "existing.txt"
    f.write_bytes(b"old content")
    mnt.flush()
    if store_env.kind == "local":
        assert refused(f, NS + "upload_url") == errno.EOPNOTSUPP
        assert refused(d, NS + "upload_url.new.txt") == errno.EOPNOTSUPP
        return
    assert not any("upload_url" in n for n in os.listxattr(f) + os.listxattr(d))
    body = tmp_path / "body"
    # the file's own URL replaces its content
    url = os.getxattr(f, NS + "upload_url").decode()
    assert url.startswith("http://127.0.0.1:")
    body.write_bytes(b"new content from curl")
    assert curl_put(url, body) in ("200", "201")
    # a name that does not exist yet, through its directory (also on the mount root)
    url_new = os.getxattr(d, NS + "upload_url.new file.txt").decode()
    body.write_bytes(b"a brand new file")
    assert curl_put(url_new, body) in ("200", "201")
    url_top = os.getxattr(mnt.path, NS + "upload_url.top.bin").decode()
    body.write_bytes(b"\x00top")
    assert curl_put(url_top, body) in ("200", "201")
    time.sleep(1.5)  # attr_timeout and dir_timeout: what another client did shows
    assert f.read_bytes() == b"new content from curl"
    assert (d / "new file.txt").read_bytes() == b"a brand new file"
    assert "new file.txt" in os.listdir(d)
    assert (mnt.path / "top.bin").read_bytes() == b"\x00top"
    # no URL for what cannot be a name or a directory's own upload; never logged
    assert refused(d, NS + "upload_url.") == errno.ENODATA
    assert refused(d, NS + "upload_url...") == errno.EINVAL
    assert refused(d, NS + "upload_url") == errno.ENODATA
    assert refused(f, NS + "upload_url.x") == errno.ENODATA
    assert refused(f, NS + "upload_url", b"x") == errno.EPERM
    log = mnt.log.read_text(errors="replace")
    for u in (url, url_new, url_top):
        assert u.split("?", 1)[1] not in log


def test_upload_url_refused_on_a_read_only_mount(
    store_env: StoreEnv, mount_factory: MountFactory
) -> None:
    """A URL would let a read-only mount write: refused first, on every store."""
    mnt = swift_mount(store_env, mount_factory, "ro")
    assert refused(mnt.path, NS + "upload_url.x.txt") == errno.EROFS
    assert len(log_lines(mnt, "the mount is read-only")) == 1


# --- checksums ---------------------------------------------------------------------------------


def test_checksums(store_env: StoreEnv, mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=["part_size=5M", "writeback_delay=60"])
    small = os.urandom(3000)
    large = os.urandom(11 * 1024 * 1024)  # three parts of 5 MiB
    (mnt.path / "small.bin").write_bytes(small)
    (mnt.path / "large.bin").write_bytes(large)
    mnt.flush()

    def checksums(name: str) -> dict[str, str]:
        """The checksums read by name (never listed: a copy must not carry them)."""
        path = mnt.path / name
        assert not [n for n in os.listxattr(path) if n.startswith(NS)]
        found = {}
        for alg in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256", "md5"):
            try:
                found[alg] = os.getxattr(path, NS + "checksum." + alg).decode()
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        return found

    if store_env.kind == "s3":
        assert checksums("small.bin") == {"sha256": hashlib.sha256(small).hexdigest()}
        digests = b"".join(
            hashlib.sha256(large[i : i + 5 * 1024 * 1024]).digest()
            for i in range(0, len(large), 5 * 1024 * 1024)
        )
        assert checksums("large.bin") == {"sha256": hashlib.sha256(digests).hexdigest() + "-3"}
        # what the server kept, asked independently
        raw = mnt.raw_store
        assert isinstance(raw, S3StoreClient)
        head = raw.client.head_object(Bucket=raw.bucket, Key="small.bin", ChecksumMode="ENABLED")
        kept = base64.b64decode(head["ChecksumSHA256"])
        assert bytes.fromhex(checksums("small.bin")["sha256"]) == kept
    elif store_env.kind == "swift":
        assert checksums("small.bin") == {"md5": hashlib.md5(small).hexdigest()}
        assert checksums("large.bin") == {}  # a large object's ETag is not its MD5
    else:
        assert checksums("small.bin") == {}
        assert checksums("large.bin") == {}
    f = mnt.path / "small.bin"
    assert refused(f, NS + "checksum.sha256", b"0" * 64) == errno.EPERM
    # a file changed and not uploaded yet shows none (they would be the old content's)
    with f.open("ab") as out:
        out.write(b"more")
    assert checksums("small.bin") == {}
    mnt.flush()
    expected = {"s3": "sha256", "swift": "md5"}.get(store_env.kind)
    after = {expected: hashlib.new(expected, small + b"more").hexdigest()} if expected else {}
    assert checksums("small.bin") == after
