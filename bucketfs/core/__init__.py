"""The filesystem in plain terms: no pyfuse3 and no httpx2. `fs.BucketFS` is the facade the
kernel side calls."""
