"""The local store: objects in a directory and an SQLite index, no server."""
