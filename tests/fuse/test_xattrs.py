"""Object metadata as xattrs through a real mount: `setfattr`/`getfattr` (Debian `attr`) and
`os.*xattr`, checked with an independent client (boto3 on SeaweedFS, `LocalBackend` for the
local store) — and presigned URLs fetched with plain `curl`.

S3-only features (URLs) are restricted to S3; the stores are listed here explicitly, so a store
added to the shared `store_env` later does not inherit tests it cannot pass.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from tests.support.helpers import (
    LocalStoreClient,
    Mount,
    MountFactory,
    S3StoreClient,
    StoreEnv,
    local_or_s3_env,
    require_tool,
)

NS = "user.bucketfs."


@pytest.fixture(params=["local", "s3"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> StoreEnv:
    return local_or_s3_env(request, tmp_path)


def head_fields(mnt: Mount, key: str) -> dict[str, str]:
    """Content-Type and the other system headers as the store has them (after a flush)."""
    mnt.flush()
    raw = mnt.raw_store
    if isinstance(raw, S3StoreClient):
        resp = raw.client.head_object(Bucket=raw.bucket, Key=key)
        headers = resp["ResponseMetadata"]["HTTPHeaders"]
        return {k: str(v) for k, v in headers.items()}
    assert isinstance(raw, LocalStoreClient)
    from bucketfs.backends.local.backend import LocalBackend

    async def head() -> dict[str, str]:
        backend = LocalBackend(raw.root)
        try:
            info = await backend.head(raw.bucket, key)
        finally:
            await backend.aclose()
        fields = {k.replace("_", "-"): v for k, v in info.system.items()}
        return {"content-type": info.content_type or "", **fields}

    return trio.run(head)


def setfattr(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("setfattr")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, timeout=30)


def getfattr(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("getfattr")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, timeout=30)


def refused(path: Path, name: str, value: bytes | None = None) -> int:
    try:
        if value is None:
            os.getxattr(path, name)
        else:
            os.setxattr(path, name, value)
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{name} on {path} was not refused")


def test_metadata_both_ways(mnt: Mount) -> None:
    store = mnt.store
    assert store is not None
    f = mnt.path / "report.csv"
    f.write_bytes(b"a,b\n")
    done = setfattr("-n", "user.project", "-v", "apollo", str(f))
    assert done.returncode == 0, done.stderr
    size, metadata = store.head("report.csv")
    assert (size, metadata["project"]) == (4, "apollo")
    assert "mode" in metadata  # the POSIX keys are kept beside it
    # the other way round: written by another client, read through the mount
    store.put("from-sdk.txt", b"x", {"origin": "sdk", "owner": "alice"})
    shown = getfattr("-d", "-m", "^user\\.", "--absolute-names", str(mnt.path / "from-sdk.txt"))
    assert 'user.origin="sdk"' in shown.stdout
    assert 'user.owner="alice"' in shown.stdout
    assert "user.mode" not in shown.stdout  # what stat shows is not an xattr
    os.removexattr(f, "user.project")
    assert "project" not in store.head("report.csv")[1]
    assert refused(f, "user.project") == errno.ENODATA


def test_object_fields_and_content_type(mnt: Mount) -> None:
    page = mnt.path / "index.html"
    page.write_bytes(b"<h1>hi</h1>")
    assert head_fields(mnt, "index.html")["content-type"] == "text/html"  # guessed
    # read by name only: a copy (rsync -X, cp -a) carries nothing of them; the type is the
    # guessed one, which a copy guesses again from its name
    assert os.listxattr(page) == []
    for field in ("etag", "last_modified", "size", "content_type", "upload_state"):
        assert os.getxattr(page, NS + field)
    assert os.getxattr(page, NS + "size") == b"11"
    assert os.getxattr(page, NS + "upload_state") == b"clean"
    assert os.getxattr(page, NS + "last_modified").endswith(b"Z")
    os.setxattr(page, NS + "content_type", b"text/plain; charset=utf-8")
    os.setxattr(page, NS + "cache_control", b"max-age=60")
    os.setxattr(page, NS + "content_disposition", b'attachment; filename="hi.html"')
    fields = head_fields(mnt, "index.html")
    assert fields["content-type"] == "text/plain; charset=utf-8"
    assert fields["cache-control"] == "max-age=60"
    assert fields["content-disposition"] == 'attachment; filename="hi.html"'
    assert page.read_bytes() == b"<h1>hi</h1>"  # a copy in place keeps the content
    shown = getfattr("--only-values", "-n", NS + "cache_control", str(page))
    assert shown.stdout == "max-age=60"
    listed = {NS + f for f in ("content_type", "cache_control", "content_disposition")}
    assert set(os.listxattr(page)) == listed
    # removing the type goes back to the guess, and again (the guess already) succeeds too
    os.removexattr(page, NS + "content_type")
    os.removexattr(page, NS + "content_type")
    assert head_fields(mnt, "index.html")["content-type"] == "text/html"
    assert NS + "content_type" not in os.listxattr(page)


def test_errors(mnt: Mount) -> None:
    f = mnt.path / "f"
    f.write_bytes(b"x")
    assert refused(f, "user.nothing") == errno.ENODATA
    assert refused(f, NS + "etag", b"forged") == errno.EPERM
    assert refused(f, NS + "size", b"1") == errno.EPERM
    assert refused(f, "user.a b", b"v") == errno.EINVAL  # not a header token
    assert refused(f, "user.k", b"two\nlines") == errno.EINVAL
    assert refused(f, "user.k", b"\xff") == errno.EINVAL
    assert refused(f, NS + "content_type", b"nonsense") == errno.EINVAL
    assert refused(f, "user.big", b"x" * 4000) == errno.E2BIG
    assert refused(f, "user.mode", b"511") == errno.EPERM
    # the tools report the same
    done = setfattr("-n", NS + "etag", "-v", "x", str(f))
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr
    done = setfattr("-n", "user.big", "-v", "x" * 3000, str(f))
    assert "Argument list too long" in done.stderr
    assert getfattr("-n", "user.nothing", str(f)).returncode != 0
    log = mnt.log.read_text(errors="replace")
    assert "a read-only attribute" in log  # one line that says why
    assert "more than the 2048 allowed" in log


def test_no_posix_acls_or_labels_and_ls_asks_once(mnt: Mount) -> None:
    """bucketfs keeps no POSIX ACLs and no security labels: reading or writing a name outside
    `user.*` is EOPNOTSUPP (namespace not supported). `ls -l` asks `security.selinux` and
    `system.posix_acl_access` of every file unless told "unsupported", which it remembers for
    the whole file system: a long listing of many files costs two GETXATTRs, not two per file
    (the kernel itself never asks for an ACL: modes and umask as before)."""
    f = mnt.path / "f"
    f.write_bytes(b"x")
    for name in ("system.posix_acl_access", "security.selinux", "trusted.x"):
        assert refused(f, name) == errno.EOPNOTSUPP
    assert refused(f, "security.x", b"v") == errno.EOPNOTSUPP
    d = mnt.path / "many"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}").write_bytes(b"y")
    before = mnt.status()["kernel_requests"].get("getxattr", 0)
    out = subprocess.run(
        [require_tool("ls"), "-l", str(d)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    assert out.count(" f") == 40
    # two from ls; the status read itself asks twice (for the size, then the value)
    assert mnt.status()["kernel_requests"].get("getxattr", 0) - before <= 4
    acl = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff"  # version 2, user::rw-
    acl += b"\x04\x00\x04\x00\xff\xff\xff\xff\x20\x00\x04\x00\xff\xff\xff\xff"
    assert refused(f, "system.posix_acl_access", acl) == errno.EOPNOTSUPP
    old = os.umask(0o027)
    try:
        (mnt.path / "g").write_bytes(b"y")
        (mnt.path / "sub").mkdir()
    finally:
        os.umask(old)
    assert (mnt.path / "g").stat().st_mode & 0o777 == 0o640
    assert (mnt.path / "sub").stat().st_mode & 0o777 == 0o750


def test_directories_and_the_root(store_env: StoreEnv, mnt: Mount) -> None:
    store = mnt.store
    assert store is not None
    d = mnt.path / "d"
    d.mkdir()
    if store_env.kind == "s3":
        # SeaweedFS keeps no metadata on directory markers: refused, not silently lost
        assert refused(d, "user.team", b"ops") == errno.EOPNOTSUPP
        assert refused(d, "user.team") == errno.ENODATA
    else:
        os.setxattr(d, "user.team", b"ops")
        assert store.head("d/")[1]["team"] == "ops"
        assert os.getxattr(d, "user.team") == b"ops"
    assert os.getxattr(mnt.path, NS + "versioning") == b"Off"
    assert os.listxattr(mnt.path) == []  # settings, control attributes: read by name only
    (mnt.path / "f").write_bytes(b"x" * 10000)
    mnt.flush()
    df = os.statvfs(mnt.path)
    assert df.f_blocks > 0
    assert df.f_bfree > 0
    used = (df.f_blocks - df.f_bfree, df.f_files - df.f_ffree)
    # the local store says what is used; S3 has no cheap request for it
    assert used == ((3, 2) if store_env.kind == "local" else (0, 0))
    os.setxattr(mnt.path, NS + "versioning", b"Enabled")
    assert os.getxattr(mnt.path, NS + "versioning") == b"Enabled"


def test_presigned_url_with_curl(store_env: StoreEnv, mount_factory: MountFactory) -> None:
    mnt = mount_factory(options=["url_ttl=3"])
    f = mnt.path / "share.txt"
    f.write_bytes(b"shared content")
    if store_env.kind == "local":
        assert refused(f, NS + "url") == errno.EOPNOTSUPP
        assert NS + "url" not in os.listxattr(f)
        return
    curl = require_tool("curl")
    done = getfattr("--only-values", "-n", NS + "url", str(f))
    url = done.stdout
    assert url.startswith("http://127.0.0.1:"), done.stderr
    fetched = subprocess.run([curl, "-sS", "-f", url], capture_output=True, check=False, timeout=30)
    assert fetched.stdout == b"shared content", fetched.stderr
    time.sleep(4.5)
    expired = subprocess.run(
        [curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert expired.stdout == "403"
    signature = url.split("X-Amz-Signature=")[1]
    assert signature not in mnt.log.read_text(errors="replace")  # never logged
