"""The same run through the Python API: `python train.py` from this folder."""

from __future__ import annotations

from curvefit.data import make
from curvefit.losses import mse
from curvefit.model import Regressor

import widevalley


def main() -> None:
    result = widevalley.fit(
        "config.toml", model=Regressor, model_kwargs={"hidden": 32}, data=make, loss=mse,
        overrides=["run.name=curvefit-api"],
    )  # fmt: skip
    print(f"center test loss {result.summary['center_test_loss']:.4f} (headline)")
    print(f"run directory {result.run_dir}")


if __name__ == "__main__":
    main()
