"""Entry points: train, sweep, flatness, compare, and the run configs they read.

Nothing else in the project imports this package (tests and benchmarks may).
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
"""The shipped run, sweep and comparison configs (TOML)."""
