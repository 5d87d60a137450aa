"""Object stores behind one protocol (`base.Backend`): `s3/`, `swift/`, `local/`, and `memory`
(tests).

Only this package imports httpx2 (the HTTP client). Nothing is imported here: importing one store
never loads another's dependencies (the memory backend does not load httpx2 or botocore).
"""
