"""Test modules importable as `tests.localray.*`."""
