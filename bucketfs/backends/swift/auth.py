"""Authentication for the Swift backend: auth v1 (tempauth, swauth, most hosted Swifts), Keystone
v3 (password or application credential) and a pre-obtained token.

Owns turning credentials into a (storage URL, token) pair, and reading those credentials from
the environment variables the `swift` command line uses. Invariants:

- credentials come from the environment (or the caller), never from the command line; no secret
  is ever logged or put into an exception message;
- an `Authenticator` is stateless: `SwiftBackend` calls `authenticate` again when a token expires
  or a request answers 401; a refused credential is `AccessDenied`, an auth service that cannot
  be reached `Unreachable`/`Transient` (retried by the caller's `retry_call`);
- Keystone: the storage URL is the catalog's `object-store` endpoint for the chosen interface
  (default `public`) and region (default: the first one listed).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2

from bucketfs.errors import AccessDenied, BackendError, ConfigError, InvalidRequest, Transient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuthResult:
    storage_url: str
    token: str
    #: POSIX time after which the token must not be used; None: until the server says 401
    expires: float | None = None


class Authenticator(Protocol):
    @property
    def auth_url(self) -> str:
        """Where credentials are checked (no secret): for logs and error messages."""

    @property
    def renewable(self) -> bool:
        """Whether `authenticate` can get a new token (False for a fixed pre-obtained token)."""

    async def authenticate(self, client: httpx2.AsyncClient) -> AuthResult: ...


def _check(response: httpx2.Response, what: str) -> None:
    """The auth service's status as an error (the one auth seam; object requests map theirs in
    `swift.error_class`)."""
    status = response.status_code
    if status < 300:
        return
    if status in (401, 403):
        raise AccessDenied(f"{what}: credentials refused (HTTP {status})")
    if status == 404:
        raise ConfigError(f"{what}: no auth service at this URL (HTTP 404)")
    if status in (408, 429, 498) or status >= 500:
        raise Transient(f"{what}: HTTP {status}")
    raise InvalidRequest(f"{what}: HTTP {status}")


@dataclass(frozen=True, slots=True)
class V1Auth:
    """Auth v1: GET the auth URL with X-Auth-User / X-Auth-Key (tempauth, swauth, Rackspace)."""

    auth_url: str
    user: str
    key: str
    renewable: bool = True

    async def authenticate(self, client: httpx2.AsyncClient) -> AuthResult:
        response = await client.get(
            self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key}
        )
        _check(response, f"auth v1 at {self.auth_url} as {self.user}")
        url = response.headers.get("x-storage-url")
        token = response.headers.get("x-auth-token") or response.headers.get("x-storage-token")
        if not url or not token:
            raise BackendError(f"auth v1 at {self.auth_url}: no X-Storage-Url/X-Auth-Token")
        expires: float | None = None
        ttl = response.headers.get("x-auth-token-expires")
        if ttl and ttl.isdigit():
            expires = _now() + int(ttl)
        return AuthResult(url, token, expires)


@dataclass(frozen=True, slots=True)
class KeystoneV3Auth:
    """Keystone v3: POST /v3/auth/tokens with a password (user + project scope) or an
    application credential (which carries its own scope)."""

    auth_url: str
    username: str | None = None
    user_id: str | None = None
    password: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret: str | None = None
    region: str | None = None
    interface: str = "public"
    renewable: bool = True

    def tokens_url(self) -> str:
        base = self.auth_url.rstrip("/")
        if not base.endswith("/v3"):
            base += "/v3"
        return base + "/auth/tokens"

    def request_body(self) -> dict[str, Any]:
        """The JSON body of the token request (holds the secret: never log it)."""
        if self.application_credential_secret:
            cred: dict[str, Any] = {"secret": self.application_credential_secret}
            if self.application_credential_id:
                cred["id"] = self.application_credential_id
            else:
                cred["name"] = self.application_credential_name
                cred["user"] = self._user()
            identity = {"methods": ["application_credential"], "application_credential": cred}
            return {"auth": {"identity": identity}}
        user = self._user()
        user["password"] = self.password or ""
        auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": user}}}
        project: dict[str, Any] = {}
        if self.project_id:
            project["id"] = self.project_id
        elif self.project_name:
            project["name"] = self.project_name
            project["domain"] = _domain(
                self.project_domain_id, self.project_domain_name, self.user_domain_id
            )
        if project:
            auth["scope"] = {"project": project}
        return {"auth": auth}

    def _user(self) -> dict[str, Any]:
        if self.user_id:
            return {"id": self.user_id}
        return {
            "name": self.username or "",
            "domain": _domain(self.user_domain_id, self.user_domain_name, None),
        }

    async def authenticate(self, client: httpx2.AsyncClient) -> AuthResult:
        url = self.tokens_url()
        response = await client.post(url, json=self.request_body())
        _check(response, f"keystone v3 at {url}")
        token = response.headers.get("x-subject-token")
        try:
            body = json.loads(response.content)
            storage_url = self.storage_url(body["token"].get("catalog", []))
            expires = _iso_time(body["token"].get("expires_at"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"keystone v3 at {url}: unexpected answer ({exc!r})") from None
        if not token:
            raise BackendError(f"keystone v3 at {url}: no X-Subject-Token")
        return AuthResult(storage_url, token, expires)

    def storage_url(self, catalog: list[dict[str, Any]]) -> str:
        """The object-store endpoint of the catalog for our interface and region."""
        for service in catalog:
            if service.get("type") != "object-store":
                continue
            for endpoint in service.get("endpoints", []):
                if endpoint.get("interface") != self.interface:
                    continue
                region = endpoint.get("region_id") or endpoint.get("region")
                if self.region is None or region == self.region:
                    return str(endpoint["url"]).rstrip("/")
        where = f" in region {self.region!r}" if self.region else ""
        raise ConfigError(
            f"keystone at {self.auth_url}: no {self.interface} object-store endpoint{where}"
        )


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A storage URL and token obtained elsewhere (OS_STORAGE_URL + OS_AUTH_TOKEN): cannot be
    renewed, so a 401 is final."""

    storage_url: str
    token: str
    renewable: bool = False

    @property
    def auth_url(self) -> str:
        return self.storage_url

    async def authenticate(self, client: httpx2.AsyncClient) -> AuthResult:
        return AuthResult(self.storage_url.rstrip("/"), self.token)


def _domain(domain_id: str | None, name: str | None, fallback_id: str | None) -> dict[str, str]:
    if domain_id:
        return {"id": domain_id}
    if name:
        return {"name": name}
    return {"id": fallback_id or "default"}


def _now() -> float:
    return datetime.datetime.now(datetime.UTC).timestamp()


def _iso_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def auth_from_env(
    env: Mapping[str, str], *, auth_url: str | None = None, region: str | None = None
) -> Authenticator:
    """Credentials the way the `swift` command line finds them.

    - `ST_AUTH`, `ST_USER`, `ST_KEY`: auth v1 (unless `ST_AUTH_VERSION` says 3);
    - `OS_AUTH_URL` with `OS_USERNAME`/`OS_USER_ID` + `OS_PASSWORD` (scoped by `OS_PROJECT_*`
      or `OS_TENANT_*`), or `OS_APPLICATION_CREDENTIAL_ID`/`_NAME` + `_SECRET`: Keystone v3;
      `OS_REGION_NAME` and `OS_INTERFACE` (or `OS_ENDPOINT_TYPE`) pick the catalog endpoint;
    - `OS_STORAGE_URL` + `OS_AUTH_TOKEN`: a ready token (not renewable).

    `auth_url` (from `-o auth_url=`) replaces ST_AUTH / OS_AUTH_URL; `region` OS_REGION_NAME.
    """
    st_auth = auth_url or env.get("ST_AUTH")
    version = env.get("ST_AUTH_VERSION") or env.get("OS_AUTH_VERSION") or ""
    version = version or env.get("OS_IDENTITY_API_VERSION", "")
    if env.get("ST_USER") and env.get("ST_KEY") and st_auth and not version.startswith("3"):
        return V1Auth(st_auth.rstrip("/"), env["ST_USER"], env["ST_KEY"])
    os_auth = auth_url or env.get("OS_AUTH_URL")
    has_password = env.get("OS_PASSWORD") and (env.get("OS_USERNAME") or env.get("OS_USER_ID"))
    has_app_cred = env.get("OS_APPLICATION_CREDENTIAL_SECRET") and (
        env.get("OS_APPLICATION_CREDENTIAL_ID") or env.get("OS_APPLICATION_CREDENTIAL_NAME")
    )
    if os_auth and (has_password or has_app_cred):
        if version and not version.startswith("3"):
            raise ConfigError(f"Keystone v{version} is not supported: use v3 (or auth v1)")
        return KeystoneV3Auth(
            os_auth,
            username=env.get("OS_USERNAME"),
            user_id=env.get("OS_USER_ID"),
            password=env.get("OS_PASSWORD"),
            user_domain_name=env.get("OS_USER_DOMAIN_NAME"),
            user_domain_id=env.get("OS_USER_DOMAIN_ID"),
            project_name=env.get("OS_PROJECT_NAME") or env.get("OS_TENANT_NAME"),
            project_id=env.get("OS_PROJECT_ID") or env.get("OS_TENANT_ID"),
            project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME"),
            project_domain_id=env.get("OS_PROJECT_DOMAIN_ID"),
            application_credential_id=env.get("OS_APPLICATION_CREDENTIAL_ID"),
            application_credential_name=env.get("OS_APPLICATION_CREDENTIAL_NAME"),
            application_credential_secret=env.get("OS_APPLICATION_CREDENTIAL_SECRET"),
            region=region or env.get("OS_REGION_NAME") or None,
            interface=_interface(env.get("OS_INTERFACE") or env.get("OS_ENDPOINT_TYPE")),
        )
    if env.get("OS_STORAGE_URL") and env.get("OS_AUTH_TOKEN"):
        return TokenAuth(env["OS_STORAGE_URL"], env["OS_AUTH_TOKEN"])
    raise ConfigError(
        "no Swift credentials: set ST_AUTH, ST_USER and ST_KEY (auth v1), or OS_AUTH_URL with "
        "OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME, or OS_APPLICATION_CREDENTIAL_ID and "
        "OS_APPLICATION_CREDENTIAL_SECRET (Keystone v3)"
    )


def _interface(value: str | None) -> str:
    """`publicURL` (Keystone v2 spelling) and `public` both mean `public`."""
    if not value:
        return "public"
    return value.removesuffix("URL")
