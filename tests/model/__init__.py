"""Layer 4: random operations on the mount and on a reference directory, compared."""
