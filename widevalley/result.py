"""What fit() returns: everything the command line leaves, as Python objects."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor, nn

from coordinator.rundir import CENTER_FILE, METRICS, RunDir
from foundation.config import Config
from foundation.parts import Parts


@dataclass
class Result:
    summary: dict[str, Any]
    """summary.json: the headline number (summary["headline"] names it), the center's,
    the replicas' and the ensemble's losses (and accuracy or metric), center_sha256, …"""
    metrics: pa.Table
    """metrics.parquet: one row per (round, replica); docs/run-directory.md has the schema."""
    center_state_dict: dict[str, Tensor]
    """The center as the model's state_dict, BatchNorm statistics recomputed."""
    run_dir: str
    config: Config
    parts: Parts | None = field(default=None, repr=False)
    _model_context: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, config: Config, parts: Parts | None = None) -> Result:
        """The result of the finished run in config's run directory."""
        run = RunDir(config.run.storage, config.run.name)
        center = torch.load(io.BytesIO(run.read_bytes(CENTER_FILE)), weights_only=True)
        table = run.read_arrow(METRICS)
        context = {
            "input_shape": tuple(center["input_shape"]),
            "num_classes": center["num_classes"],
        }
        return cls(run.read_json("summary.json"), table, center["state_dict"], run.path, config,
                   parts, context)  # fmt: skip

    @property
    def headline(self) -> float:
        """The number this run is ranked by (summary["headline"]: the center's test
        accuracy or metric, or its test loss when it has none; the replicas' mean
        instead of the center's for uncoupled runs, sgd and esgd)."""
        return float(self.summary[self.summary["headline"]])

    def model(self) -> nn.Module:
        """The center as a model in eval mode (built with the run's model factory)."""
        parts = self.parts or Parts.from_config(self.config)
        model = parts.new_model_for(self._model_context, seed=0)
        model.load_state_dict(self.center_state_dict)
        return model.eval()
