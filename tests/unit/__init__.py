"""Test modules importable as `tests.unit.*`."""
