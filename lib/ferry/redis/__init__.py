"""The Redis side: connecting to a standalone server or a cluster, the faults to wait out,
least-privilege roles and retention."""
