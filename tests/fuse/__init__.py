"""Layer 3: the mount through the real kernel, checked with an independent client."""
