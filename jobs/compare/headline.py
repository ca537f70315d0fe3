"""What a comparison ranks by: the runs' headline (summary.json `headline`).

A run with the accuracy metric is ranked by its test accuracy (higher is better), one
with a user's metric by that metric (higher is better), one without a metric by its test
loss (lower is better). Every place that ranks, averages or prints the number goes
through a Headline, so "better" and the words used for it always agree with the runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SHORT = {"accuracy": "acc", "metric": "metric", "loss": "loss"}


@dataclass(frozen=True)
class Headline:
    kind: str
    """"accuracy", "metric" (a user's) or "loss" (the run has no metric)."""

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "loss"

    @property
    def mode(self) -> str:
        """As summary.json's headline_mode: "max" or "min"."""
        return "max" if self.higher_is_better else "min"

    @property
    def test(self) -> str:
        """The row column of the test number (test_accuracy, test_metric, test_loss)."""
        return f"test_{self.kind}"

    @property
    def train(self) -> str:
        return f"train_{self.kind}"

    @property
    def short(self) -> str:
        """As a table header says it: acc, metric, loss."""
        return SHORT[self.kind]

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def gap_words(self) -> str:
        """The generalization gap, oriented so that it is positive when train is better."""
        return "train − test" if self.higher_is_better else "test − train"

    def gap(self, train: float, test: float) -> float:
        return train - test if self.higher_is_better else test - train

    def better(self, a: float, b: float) -> bool:
        """Whether a is strictly better than b."""
        return a > b if self.higher_is_better else a < b


ACCURACY = Headline("accuracy")


def headline_of(summary: Mapping[str, Any]) -> Headline:
    """A run's headline from its summary.json (center_test_<kind>)."""
    return Headline(str(summary.get("headline", "center_test_accuracy")).rsplit("_", 1)[1])


def headline_of_rows(rows: Sequence[Mapping[str, Any]]) -> Headline:
    """The headline of a comparison's rows (one for all: the runs share loss and metric);
    hand-made rows without one are accuracy rows."""
    return Headline(str(rows[0]["headline"])) if rows and "headline" in rows[0] else ACCURACY
