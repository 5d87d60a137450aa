"""Object stores behind one protocol (`base.Backend`): S3, local directory, memory (tests).

Only this package imports httpx2 (the HTTP client). `open_backend` builds one from a parsed source.
"""

from __future__ import annotations

from bucketfs.backends.s3 import S3Backend, S3Credentials

__all__ = ["S3Backend", "S3Credentials", "open_s3"]


def open_s3(
    endpoint: str | None,
    region: str | None,
    profile: str | None,
    *,
    path_style: bool | None = None,
    max_connections: int = 32,
    retry_deadline: float = 60.0,
) -> S3Backend:
    """An S3 backend with credentials from botocore's chain (environment, shared files,
    `profile`, container/instance metadata; none at all means anonymous requests). `region`
    None: the profile's, else us-east-1; `endpoint` None: AWS for that region."""
    return S3Backend(
        endpoint,
        region,
        profile,
        path_style=path_style,
        max_connections=max_connections,
        retry_deadline=retry_deadline,
    )
