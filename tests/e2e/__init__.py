"""Test modules importable as `tests.e2e.*`."""
