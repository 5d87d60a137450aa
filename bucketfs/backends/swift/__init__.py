"""OpenStack Swift (Keystone v3, TempAuth, v1 URLs), with SLO for large objects."""
