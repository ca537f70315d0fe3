"""Test modules importable as `tests.deploy.*`."""
