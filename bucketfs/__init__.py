"""bucketfs: mount object-storage buckets as ordinary directories.

One file is one object; `/`-separated prefixes are directories. See README.rst.
"""

__version__ = "0.1.0"
