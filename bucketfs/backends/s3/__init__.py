"""S3 and compatible stores (AWS, SeaweedFS, MinIO, Ceph, Swift's s3api)."""
