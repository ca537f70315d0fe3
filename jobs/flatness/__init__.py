"""The flatness report, `python -m jobs.flatness` (see command.py for what it measures).

settings (what to measure with) → inputs (a run directory's models) → measuring (one
model) → rows (tidy rows, summary) and rescaling (Dinh's check) → running (every model,
here or one Ray task each) → verdicts, tables, report, plots (what is printed and
written) → command (the command line). The names below are what callers use.
"""

from jobs.flatness.command import main
from jobs.flatness.inputs import (
    LoadedRun,
    ModelSpec,
    dataset_of,
    model_specs,
    open_run,
    prepare_model,
    trained_on,
)
from jobs.flatness.measuring import Measured, measure
from jobs.flatness.rows import SCHEMA
from jobs.flatness.running import measure_model
from jobs.flatness.settings import FlatnessError, Settings

__all__ = [
    "SCHEMA",
    "FlatnessError",
    "LoadedRun",
    "Measured",
    "ModelSpec",
    "Settings",
    "dataset_of",
    "main",
    "measure",
    "measure_model",
    "model_specs",
    "open_run",
    "prepare_model",
    "trained_on",
]
