"""Adapters over fsspec filesystems (a local disk, memory, S3, GCS...): a BlobStore with atomic
writes and a JSON-lines MetricsStore."""
