"""Wide Valley's Python API: train coupled replicas of your own model.

    import widevalley
    result = widevalley.fit("run.toml", model=MyNet, data=load_my_data)

fit() takes a config (a Config, a TOML path, or the defaults) and, optionally, your model,
data, loss and metric as objects; a config can also name them by import path
(model.arch = "mypkg.nets:MyNet"). See docs/your-model.md.

Every error fit() raises is a WideValleyError, so one `except WideValleyError` catches
them all. Its kinds, for the cases a program tells apart:
- bad input, found before anything trains: ConfigError (DatasetError for data that
  cannot be loaded), ResourceError (the cluster cannot hold the replicas), ResumeMismatch
  (the run directory holds a checkpoint of another run), LeaseHeld (another run is
  writing that run directory), StorageError (the run's storage cannot be written);
- a run that failed: RunFailed (every replica failed in one round, or one keeps
  failing), DivergenceError (NaN or inf, train.on_divergence = "stop"), CapacityError (a
  lost replica found no room in time), CollectiveFailed (an all-reduce did not
  complete), LeaseLost (another run took the run directory over), and CoordinatorError
  for any other error while the run trained: the original is its `cause`, and it is an
  instance of the original's class where Python can combine the two;
- RunInterrupted: the run stopped on SIGTERM or SIGINT after a checkpoint.
"""

from cluster.actors import CapacityError
from cluster.collective import CollectiveFailed
from cluster.driver import CoordinatorError
from cluster.resources import ResourceError
from cluster.stopping import RunInterrupted
from coordinator.failures import DivergenceError, RunFailed
from coordinator.lease import LeaseHeld, LeaseLost
from coordinator.resume import ResumeMismatch
from foundation.config import Config, load_config
from foundation.data import DatasetError
from foundation.errors import WideValleyError
from foundation.fields import ConfigError
from foundation.parts import Parts
from foundation.storage import StorageError
from widevalley.api import fit
from widevalley.result import Result

__all__ = [
    "CapacityError",
    "CollectiveFailed",
    "Config",
    "ConfigError",
    "CoordinatorError",
    "DatasetError",
    "DivergenceError",
    "LeaseHeld",
    "LeaseLost",
    "Parts",
    "ResourceError",
    "Result",
    "ResumeMismatch",
    "RunFailed",
    "RunInterrupted",
    "StorageError",
    "WideValleyError",
    "fit",
    "load_config",
]
