"""The session's Swift server as a pytest fixture, shared by `tests/backends` and `tests/fuse`.

Owns one `SwiftServer` per test session: started on first use, stopped when the session ends.
Both conftests import the `swift` fixture from here; the server itself is a module-level
singleton so that importing the fixture twice never starts two servers. Also owns
`SwiftStoreClient` (an independent urllib client) and `swift_store_env` for the FUSE suites.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pytest

from bucketfs.backends.swift.auth import V1Auth
from bucketfs.backends.swift.backend import SwiftBackend
from tests.support.helpers import StoreClient, StoreEnv, StoreError
from tests.support.swift_server import KEY, USER, SwiftServer, swift_available

_server: SwiftServer | None = None


def _stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def swift(request: pytest.FixtureRequest) -> SwiftServer:
    """A real single-node Swift (tempauth test:tester/testing) on loopback."""
    global _server
    reason = swift_available()
    if reason is not None:
        pytest.skip(f"no Swift server: {reason}")
    if _server is None:
        _server = SwiftServer().start()
        request.session.config.add_cleanup(_stop)
    return _server


def make_swift(server: SwiftServer, **kwargs: Any) -> SwiftBackend:
    """A SwiftBackend on the session's Swift as test:tester (Temp-URL key created if none)."""
    kwargs.setdefault("retry_deadline", 10.0)
    kwargs.setdefault("create_tempurl_key", True)
    return SwiftBackend(V1Auth(server.auth_url, USER, KEY), **kwargs)


# --- for the kernel-level suites: an independent client and the store environment ---------------


class SwiftStoreClient(StoreClient):
    """The Swift API over plain urllib (no bucketfs code), for checking what a mount wrote.

    Safe to use from worker threads: every call is one synchronous HTTP request (plus one
    authentication the first time)."""

    def __init__(self, server: SwiftServer, bucket: str) -> None:
        super().__init__(bucket)
        self.server = server
        self._auth: tuple[str, str] | None = None

    def for_bucket(self, bucket: str) -> SwiftStoreClient:
        return SwiftStoreClient(self.server, bucket)

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        if self._auth is None:
            self._auth = self.server.auth()
        url, token = self._auth
        target = f"{url}/{path}" if path else url
        try:
            return self.server.request(
                method, target + (f"?{query}" if query else ""), token, body, headers
            )
        except urllib.error.HTTPError as exc:
            missing = exc.code == 404
            raise StoreError(f"{method} {path}: HTTP {exc.code}", missing=missing) from exc

    def _obj(self, key: str) -> str:
        return f"{quote(self.bucket, safe='')}/{quote(key, safe='/')}"

    def create_bucket(self) -> None:
        self._call("PUT", quote(self.bucket, safe=""))

    def delete_bucket(self) -> None:
        self._call("DELETE", quote(self.bucket, safe=""))

    def list_buckets(self) -> list[str]:
        _, _, body = self._call("GET", "", query="format=json&limit=10000")
        return sorted(str(item["name"]) for item in json.loads(body))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        headers = {f"X-Object-Meta-{k}": v for k, v in (metadata or {}).items()}
        self._call("PUT", self._obj(key), data, headers)

    def get(self, key: str) -> bytes:
        return self._call("GET", self._obj(key))[2]

    def head(self, key: str) -> tuple[int, dict[str, str]]:
        _, headers, _ = self._call("HEAD", self._obj(key))
        meta = {
            k.lower().removeprefix("x-object-meta-"): v
            for k, v in headers.items()
            if k.lower().startswith("x-object-meta-")
        }
        return int(headers.get("Content-Length", "0")), meta

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        marker = ""
        while True:
            query = f"format=json&limit=10000&prefix={quote(prefix)}&marker={quote(marker)}"
            _, _, body = self._call("GET", quote(self.bucket, safe=""), query=query)
            page = [str(item["name"]) for item in json.loads(body)]
            out.extend(page)
            if len(page) < 10000:
                return sorted(out)
            marker = page[-1]

    def delete(self, key: str) -> None:
        self._call("DELETE", self._obj(key))


def swift_store_env(server: SwiftServer) -> StoreEnv:
    """Mounts of `swift://` with the tempauth test account's credentials in the environment."""
    return StoreEnv(
        kind="swift",
        options=[],
        env=server.env(),
        _client=lambda bucket: SwiftStoreClient(server, bucket),
    )


def s3api_store_env(server: SwiftServer) -> StoreEnv:
    """Mounts of `s3://` through the same Swift's s3api middleware (path-style; tempauth's
    user and key are the S3 access key and secret), checked through the Swift API."""
    env = server.env()
    env.update(AWS_ACCESS_KEY_ID=USER, AWS_SECRET_ACCESS_KEY=KEY, AWS_DEFAULT_REGION="us-east-1")
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    return StoreEnv(
        kind="s3",
        options=[f"endpoint={server.endpoint}", "region=us-east-1", "addressing=path"],
        env=env,
        _client=lambda bucket: SwiftStoreClient(server, bucket),
    )
