"""The kernel side: the pyfuse3 adapter (the one errno seam), the pyfuse3 session, fusermount,
and the workarounds of pyfuse3's loop. The only package that imports pyfuse3."""
