"""The control channel: extended attributes on the mount itself that ask the daemon about its
state or tell it to upload now.

Owns the names of those attributes, the one list both sides read: the daemon answers them
(`fs.BucketFS`), the `bucketfs status`/`flush`/`unmount` commands (`app/client.py`, `app/cli.py`)
ask them. Invariant: a control attribute is never stored on an object; it is read-only except
`XATTR_FLUSH`, which only uploads.
"""

from __future__ import annotations

#: on the root: the daemon's process id (decimal)
XATTR_PID = "user.bucketfs.pid"
#: on the root: a JSON report of the mount (`bucketfs status`)
XATTR_STATUS = "user.bucketfs.status"
#: set on a file or directory: returns once everything below it is on the server
XATTR_FLUSH = "user.bucketfs.flush"
#: on a file: where its data is ("clean", "dirty", "uploading", ...)
XATTR_UPLOAD_STATE = "user.bucketfs.upload_state"

#: the control attributes, which no object's metadata may hold
CONTROL_XATTRS = frozenset({XATTR_PID, XATTR_STATUS, XATTR_FLUSH, XATTR_UPLOAD_STATE})
