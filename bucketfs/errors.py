"""The error tree of bucketfs, with one errno per class.

Owns every exception type the layers raise to each other. Invariants: every concrete class has an
`errno`; the FUSE adapter turns a `BucketfsError` into `FUSEError(exc.errno)` and nothing else;
HTTP statuses are mapped to these classes in exactly one function per protocol (see
`backends/`). `tests/unit/test_errors.py` fails if a class is added without an errno.
"""

from __future__ import annotations

import errno as _errno


class BucketfsError(Exception):
    """Base of every error bucketfs raises on purpose."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        if errno is not None:
            self.errno = errno


class ConfigError(BucketfsError):
    """The command line, an option or a configuration file is wrong."""

    errno = _errno.EINVAL


# --- backend -------------------------------------------------------------------------------


class BackendError(BucketfsError):
    """The object store refused or failed a request."""

    errno = _errno.EIO


class NotFound(BackendError):
    """The object does not exist."""

    errno = _errno.ENOENT


class BucketNotFound(NotFound):
    """The bucket does not exist."""


class AccessDenied(BackendError):
    """The credentials were refused or do not allow this request."""

    errno = _errno.EACCES


class PreconditionFailed(BackendError):
    """The object changed since we last saw it (If-Match / If-None-Match failed)."""

    errno = _errno.ESTALE


class AlreadyExists(BackendError):
    """The bucket or object already exists."""

    errno = _errno.EEXIST


class BucketNotEmpty(BackendError):
    """The bucket still holds objects."""

    errno = _errno.ENOTEMPTY


class InvalidRequest(BackendError):
    """The server rejected the request as malformed (bad name, bad argument, too large)."""

    errno = _errno.EINVAL


class ServerNotImplemented(InvalidRequest):
    """The server does not implement this request or one of its headers (HTTP 501)."""

    errno = _errno.EOPNOTSUPP


class Transient(BackendError):
    """A timeout, connection error, 429 or 5xx that outlived its retries."""

    errno = _errno.EIO


class Unreachable(Transient):
    """The endpoint could not be connected to."""


# --- filesystem ----------------------------------------------------------------------------


class FsError(BucketfsError):
    """A POSIX-level refusal by the filesystem core."""


class NotADirectory(FsError):
    """Not a directory."""

    errno = _errno.ENOTDIR


class IsADirectory(FsError):
    """Is a directory."""

    errno = _errno.EISDIR


class DirectoryNotEmpty(FsError):
    """Directory not empty."""

    errno = _errno.ENOTEMPTY


class FileExists(FsError):
    """File exists."""

    errno = _errno.EEXIST


class ReadOnly(FsError):
    """Read-only file system."""

    errno = _errno.EROFS


class BadHandle(FsError):
    """Bad file handle."""

    errno = _errno.EBADF


class NoAttribute(FsError):
    """No such attribute."""

    errno = _errno.ENODATA


class NameTooLong(FsError):
    """File name too long."""

    errno = _errno.ENAMETOOLONG


class NoEntry(FsError):
    """No such file or directory."""

    errno = _errno.ENOENT


class NotPermitted(FsError):
    """Operation not permitted."""

    errno = _errno.EPERM


class NotSupported(FsError):
    """Operation not supported by an object store."""

    errno = _errno.EOPNOTSUPP


class InvalidArgument(FsError):
    """Invalid argument."""

    errno = _errno.EINVAL


class CrossDevice(FsError):
    """Rename across buckets."""

    errno = _errno.EXDEV


class MetadataTooLarge(FsError):
    """The object's metadata would exceed what the store accepts (2 KiB of user metadata on S3)."""

    errno = _errno.E2BIG


class FileTooLarge(FsError):
    """The file would be larger than the store's largest object (`Backend.max_object_size`)."""

    errno = _errno.EFBIG


# --- cache ---------------------------------------------------------------------------------


class CacheError(BucketfsError):
    """The local cache directory failed."""

    errno = _errno.EIO


class CacheFull(CacheError):
    """No space left in the cache directory."""

    errno = _errno.ENOSPC
