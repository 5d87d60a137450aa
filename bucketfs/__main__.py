"""`python -m bucketfs ...`: the same as the `bucketfs` command (tests run it this way)."""

import sys

from bucketfs.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
