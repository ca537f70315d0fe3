"""What is checked before any replica starts (one line each, exit 2).

check_inputs: a resume of another config, the data set, and the parts (the storage and
the run directory are found free before: coordinator/lease.py, check_run_directory).
check_parts: runs that name user code (an import path, or objects given to the Python
API) build the model once and put one batch through it, the loss and the metric, and
try packing when replicas are packed: an import that fails, a factory that raises, data of the wrong
shape, a loss that is not a scalar, a model without trainable parameters or one that
cannot be packed each fail with one line naming the config key. The check runs where
the data can be loaded without passing through the driver: in this process when Ray is
on this machine, else in one short Ray task on the cluster. Runs of built-ins only
are checked by the config's own rules and need none of this.
"""

from __future__ import annotations

import os

import ray

from coordinator import checkpoint
from coordinator.resume import check_same_run
from foundation.config import Config, check_batch_size, config_from_text, names_user_code, to_dict
from foundation.data import load_dataset
from foundation.parts import Parts, check
from foundation.storage import Storage
from replicas.packed import check_packable


def check_inputs(config: Config, run: Storage, fresh: bool) -> None:
    """Everything `python -m jobs.train` can check before any actor starts (and before
    anything is written), `run` being the run directory already found free: a resume of
    another config, the data (its Parquet cache is built here; the replicas only read
    it) and, for user code, the model, data and loss together (check_parts)."""
    if not fresh and run.exists("config.toml") and run.child(checkpoint.FOLDER).list_dirs():
        saved = config_from_text(run.read_bytes("config.toml").decode())
        check_same_run(to_dict(saved), to_dict(config), str(run))
    if not names_user_code(config):
        data = load_dataset(config.data.dataset, config.data.root)
        check_batch_size(config, len(data.train.y))
    if not on_remote_cluster():  # else the driver checks in a Ray task, once connected
        check_parts(config, remote=False)


def on_remote_cluster() -> bool:
    """True when the run goes to a cluster named by RAY_ADDRESS (e.g. under `ray job
    submit`), whose nodes, not this process, load the data."""
    return os.environ.get("RAY_ADDRESS", "") not in ("", "local")


def check_parts(config: Config, parts: Parts | None = None, *, remote: bool) -> None:
    """The checks of the module's docstring: in this process, or (remote, after Ray is
    connected) in a Ray task; ConfigError (or a RayTaskError carrying it) on a failure."""
    if parts is None and not names_user_code(config):
        return
    if remote:
        ray.get(ray.remote(num_cpus=1)(_check).remote(config, parts))
    else:
        _check(config, parts)


def _check(config: Config, parts: Parts | None) -> None:
    parts = parts if parts is not None else Parts.from_config(config)
    data = check(parts, config)
    check_packable(parts, config, data)
