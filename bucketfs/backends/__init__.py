"""Object stores behind one protocol (`base.Backend`): `s3/`, `swift/`, `local/`, and `memory`
(tests).

    base.py        the protocol, its limits, and the optional capabilities with their defaults
    retry.py       the one retry loop (backoff, jitter, deadline)
    http.py        what the HTTP stores share: quoting, transport errors, ranged GETs
    inprocess.py   what the in-process stores share: S3's name, key and listing rules
    memory.py      the store in dicts (tests)
    s3/            client.py (request path), wire.py and pool.py (h11 over trio streams),
                   errors.py, multipart.py, backend.py, and values on the wire (values.py,
                   xmlparse.py, sigv4.py)
    swift/         client.py (auth, requests, errors), account.py (containers, listings),
                   segments.py and slo.py (large objects), backend.py, auth.py, values.py
    local/         backend.py (async face), store.py (operations), index.py (SQLite, blobs)

Only this package imports httpx2, httpcore2 and botocore. Nothing is imported here: importing
one store never loads another's dependencies (the memory backend does not load httpx2 or
botocore; `tests/unit/test_memory_backend.py` checks it).
"""
