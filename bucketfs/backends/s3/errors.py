"""The one seam where an S3 answer's status and error code become a `bucketfs.errors` class.

Owns `error_class` (status + S3 error code -> class). Invariants: every status a server can
send maps to exactly one `BackendError` subclass; everything that `retry.retry_call` retries is
a `Transient`, and nothing else is; `tests/unit/test_errors.py` walks `HANDLED_STATUSES` and
fails on an unmapped one. A request that got no answer at all is `http.transport_error`'s.
"""

from __future__ import annotations

from bucketfs.errors import (
    AccessDenied,
    AlreadyExists,
    BackendError,
    BucketNotEmpty,
    BucketNotFound,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ServerNotImplemented,
    Transient,
)

#: statuses retried with backoff (then surfaced as `Transient`)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: every status `error_class` maps on purpose; all others fall back by their hundreds
HANDLED_STATUSES = frozenset(
    {301, 307, 400, 401, 403, 404, 405, 409, 411, 412, 413, 416, 429, 500, 501, 502, 503, 504}
)

#: S3 error codes that are transient whatever their status says
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "ConditionalRequestConflict",
        # the body that arrived does not match its checksum or signed hash: sent again, it
        # is read again (Swift's 422 is retried for the same reason)
        "BadDigest",
        "XAmzContentSHA256Mismatch",
    }
)

_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "RequestTimeTooSkewed",
    }
)

#: status implied by a code when only the code is known (per-key errors of DeleteObjects)
_CODE_STATUS = {
    "NoSuchKey": 404,
    "NoSuchBucket": 404,
    "NoSuchVersion": 404,
    "NoSuchUpload": 404,
    "PreconditionFailed": 412,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "InvalidRange": 416,
    "NotImplemented": 501,
}


def error_class(status: int | None, code: str | None = None) -> type[BackendError]:
    """The error class for an S3 answer: `status` (None when only a code is known, as in the
    per-key errors of DeleteObjects) and the `<Code>` of the error body (None for HEAD)."""
    if status is None:
        status = 403 if code in _DENIED_CODES else _CODE_STATUS.get(code or "", 500)
    if code in _TRANSIENT_CODES:
        return Transient
    if code in _DENIED_CODES or status in (401, 403):
        return AccessDenied
    if status == 404:
        return BucketNotFound if code == "NoSuchBucket" else NotFound
    if status == 412:
        return PreconditionFailed
    if status == 409:
        if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
            return AlreadyExists
        if code == "BucketNotEmpty":
            return BucketNotEmpty
        return InvalidRequest
    if status == 501:
        return ServerNotImplemented
    if status in RETRY_STATUSES or status >= 500:
        return Transient
    # 3xx (wrong region, redirects we do not follow), other 4xx
    return InvalidRequest
