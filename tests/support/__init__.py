"""Test support shared across test packages: a TCP fault proxy, a cloud worker process."""
