"""The same run through the Python API: `python train.py` from this folder."""

from __future__ import annotations

from seqnets.data import load
from seqnets.nets import GRUClassifier

import widevalley


def main() -> None:
    result = widevalley.fit(
        "config.toml", model=GRUClassifier, model_kwargs={"hidden": 64}, data=load,
        overrides=["run.name=gru-api"],
    )  # fmt: skip
    print(f"center test accuracy {result.summary['center_test_accuracy']:.4f}")
    print(f"run directory {result.run_dir}")


if __name__ == "__main__":
    main()
