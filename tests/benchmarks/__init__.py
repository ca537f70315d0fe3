"""Test modules importable as `tests.benchmarks.*`."""
