"""What resuming checks: that the checkpoint is of this run.

check_same_run refuses to resume a run directory with a config that trains something
else; how long a run trains and how it reports may change (RESUMABLE_CHANGES).
check_same_model refuses a checkpoint of another model, even under the same names.
"""

from __future__ import annotations

import itertools
from typing import Any

from foundation.errors import WideValleyError


class ResumeMismatch(WideValleyError, ValueError):
    """The run directory holds a checkpoint of a differently configured run."""


# A resumed run may change how long it trains and how it reports, not what it trains.
# Checkpoints hold each replica on its own, so a resume may also pack them differently
# (resources.replicas_per_actor = auto on another cluster): the same training, though
# not bit-identical to an uninterrupted run, since packed kernels sum in another order.
RESUMABLE_CHANGES = ("train", "logging", "run.name", "run.storage", "resources.replicas_per_actor")


def check_same_run(
    saved: dict[str, Any], now: dict[str, Any], where: str, allowed: tuple[str, ...] = ()
) -> None:
    """Refuse to resume a run directory with a config that trains something else.

    `allowed` names more keys (or sections) that may differ, e.g. the η and γ0 that
    Population Based Training perturbs when a trial takes over another's checkpoint.
    """
    for section, values in saved.items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if {section, name} & {*RESUMABLE_CHANGES, *allowed}:
                continue
            current = now.get(section, {}).get(key)
            if current != value:
                raise ResumeMismatch(
                    f"{where} holds a run with {name} = {value!r}, not {current!r}: "
                    "use --fresh to start over, or another run.name"
                )


def check_same_model(state: dict[str, Any], now: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint of another model: the config's names can stay the same while
    the code behind them changed (fit's objects, an edited class)."""
    again = "resume with the same model, or start over (--fresh, fit(fresh=True))"
    saved = state.get("model")
    if saved is not None and saved["class"] != now["class"]:
        raise ResumeMismatch(
            f"{path} holds a checkpoint of {saved['class']}; this model is {now['class']}: " + again
        )
    count = state.get("num_params", now["num_params"])  # checkpoints before "model"
    if count != now["num_params"]:
        raise ResumeMismatch(
            f"{path} holds a checkpoint of a model with {count} parameters; this model has "
            f"{now['num_params']}: " + again
        )
    tensors = now["tensors"] if saved is None else saved["tensors"]
    for i, (then, here) in enumerate(itertools.zip_longest(tensors, now["tensors"])):
        if then is None or here is None or then[1] != here[1]:
            raise ResumeMismatch(
                f"{path} holds a checkpoint whose tensor {i} is {_shown(then)}; this "
                f"model's is {_shown(here)}: " + again
            )


def _shown(tensor: list[Any] | None) -> str:
    return "missing" if tensor is None else f"{tensor[0]} of shape {tuple(tensor[1])}"
