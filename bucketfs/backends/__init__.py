"""Object stores behind one protocol (`base.Backend`): S3, local directory, memory (tests).

Only this package imports httpx. `open_backend` builds one from a parsed source.
"""
