"""What persistent attributes (issue 14 item 2) rely on, checked on every store: a
metadata-only change by another client (a server-side copy of an object onto itself with new
metadata) keeps the ETag and the size but moves LastModified on, and a listing shows the same
LastModified as a HEAD (to the second). Where a store breaks this, a row keyed by ETag, size
and LastModified could not tell the change, and that store gets no persistence.
"""

from __future__ import annotations

import trio

from bucketfs.backends.base import Backend
from bucketfs.types import WriteOptions
from tests.support.contract import Runner


def test_a_metadata_only_copy_moves_last_modified_on(run: Runner, backend: Backend) -> None:
    async def body(bucket: str) -> None:
        await backend.put(bucket, "k", b"payload", WriteOptions(metadata={"a": "1"}))
        before = await backend.head(bucket, "k")
        await trio.sleep(1.2)  # LastModified has one-second resolution on S3
        await backend.copy(bucket, "k", "k", WriteOptions(metadata={"a": "2"}))
        after = await backend.head(bucket, "k")
        assert after.metadata.get("a") == "2"
        assert (after.etag, after.size) == (before.etag, before.size)
        assert int(after.last_modified) >= int(before.last_modified) + 1, (before, after)
        page = await backend.list_page(bucket, "", delimiter="/")
        (listed,) = [o for o in page.objects if o.key == "k"]
        assert (listed.etag, listed.size) == (after.etag, after.size)
        assert int(listed.last_modified) == int(after.last_modified), (listed, after)

    run(body)
