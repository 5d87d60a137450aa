"""Every error class has an errno, and every HTTP status the S3 seam handles maps to a class."""

from __future__ import annotations

import errno
import inspect

import pytest

import bucketfs.errors
from bucketfs.backends.s3.errors import HANDLED_STATUSES, RETRY_STATUSES, error_class
from bucketfs.errors import BackendError, BucketfsError, Transient

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(bucketfs.errors, inspect.isclass)
    if issubclass(cls, BucketfsError) and cls.__module__ == bucketfs.errors.__name__
]


def test_error_classes_found() -> None:
    assert len(ERROR_CLASSES) > 20


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_an_errno(cls: type[BucketfsError]) -> None:
    assert isinstance(cls.errno, int)
    assert cls.errno in errno.errorcode
    assert cls.__doc__, "the docstring is the default message"
    instance = cls()
    assert instance.errno == cls.errno
    assert str(instance)


def test_errno_can_be_overridden() -> None:
    assert BackendError("x", errno=errno.EROFS).errno == errno.EROFS


@pytest.mark.parametrize("status", sorted(HANDLED_STATUSES))
def test_every_handled_status_maps_to_a_backend_error(status: int) -> None:
    cls = error_class(status)
    assert issubclass(cls, BackendError)
    assert cls in ERROR_CLASSES


def test_every_error_status_maps_somewhere() -> None:
    for status in range(300, 600):
        assert issubclass(error_class(status), BackendError), status


@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_retried_statuses_are_transient(status: int) -> None:
    assert issubclass(error_class(status), Transient)
