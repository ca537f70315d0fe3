"""Test modules importable as `tests.inprocess.*`."""
