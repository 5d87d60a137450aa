"""The local write-back block cache: persistent index, data files, uploads (docs/cache.md)."""
