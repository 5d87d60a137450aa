"""S3 multipart uploads: the multipart half of `base.Backend` over S3's REST API.

Owns CreateMultipartUpload, UploadPart, UploadPartCopy, CompleteMultipartUpload and
AbortMultipartUpload. Invariants: parts are object data (sent like a PUT's body, with its
checksum: see `client.py` on payload signing and checksums); the checksum of every part sent
or copied is kept in memory until its upload completes or is aborted, and listed in the
completion (an upload is created, filled and completed by one caller in one run); a copied
part is a server-side ranged copy checked with `x-amz-copy-source-if-match`, no data passes
through us; an error inside a 200 answer (S3 sends them for UploadPartCopy and
CompleteMultipartUpload) is raised like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

from bucketfs.backends.s3 import xmlparse
from bucketfs.backends.s3.client import CHECKSUM_HEADER, S3Client
from bucketfs.backends.s3.values import quoted_etag, write_headers
from bucketfs.types import PutResult, WriteOptions


class S3Multipart(S3Client):
    """The multipart operations of `backend.S3Backend`."""

    async def create_multipart(
        self, bucket: str, key: str, opts: WriteOptions | None = None
    ) -> str:
        headers = write_headers(opts)
        if self.checksums:
            headers["x-amz-checksum-algorithm"] = "SHA256"
        root = await self._xml("POST", bucket, key, query={"uploads": ""}, headers=headers)
        upload_id = xmlparse.parse_upload_id(root)
        if self.checksums:
            self._part_checksums[upload_id] = {}
        return upload_id

    async def upload_part(
        self, bucket: str, key: str, upload_id: str, part_number: int, data: bytes
    ) -> str:
        query = {"partNumber": str(part_number), "uploadId": upload_id}
        headers: dict[str, str] = {}
        digest = await self._data_checksum(data, headers)
        response, _ = await self._request(
            "PUT", bucket, key, query=query, headers=headers, body=data, data=True, sha256=digest
        )
        self._part_checksum(upload_id, part_number, headers.get(CHECKSUM_HEADER))
        return xmlparse.strip_etag(response.header(b"etag") or "")

    def _part_checksum(self, upload_id: str, part_number: int, value: str | None) -> None:
        """Remember what the completion says of a part (a part sent again replaces it)."""
        parts = self._part_checksums.get(upload_id)
        if parts is None:
            return  # created without checksums (or by an earlier run)
        if value:
            parts[part_number] = value
        else:
            parts.pop(part_number, None)

    async def upload_part_copy(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        *,
        src_version_id: str | None = None,
        if_match: str | None = None,
    ) -> str:
        headers = {
            "x-amz-copy-source": self._copy_source(bucket, src_key, src_version_id),
            "x-amz-copy-source-range": f"bytes={start}-{end - 1}",
        }
        if if_match:
            headers["x-amz-copy-source-if-match"] = quoted_etag(if_match)
        query = {"partNumber": str(part_number), "uploadId": upload_id}
        root = await self._xml("PUT", bucket, key, query=query, headers=headers, error_in_body=True)
        # AWS and SeaweedFS compute a copied part's checksum; Swift's s3api does not (and
        # does not ask for part checksums when completing)
        self._part_checksum(upload_id, part_number, xmlparse.text(root, "ChecksumSHA256"))
        return xmlparse.parse_etag_result(root)

    async def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> PutResult:
        response, content = await self._request(
            "POST",
            bucket,
            key,
            query={"uploadId": upload_id},
            body=xmlparse.complete_body(parts, self._part_checksums.get(upload_id, {})),
            error_in_body=True,
        )
        self._part_checksums.pop(upload_id, None)
        etag = xmlparse.parse_etag_result(xmlparse.parse(content))
        return PutResult(etag=etag, version_id=response.header(b"x-amz-version-id"))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        self._part_checksums.pop(upload_id, None)
        await self._request("DELETE", bucket, key, query={"uploadId": upload_id})
