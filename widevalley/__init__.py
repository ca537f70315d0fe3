"""Wide Valley's Python API: train coupled replicas of your own model.

    import widevalley
    result = widevalley.fit("run.toml", model=MyNet, data=load_my_data)

fit() takes a config (a Config, a TOML path, or the defaults) and, optionally, your model,
data, loss and metric as objects; a config can also name them by import path
(model.arch = "mypkg.nets:MyNet"). See docs/your-model.md.
"""

from foundation.config import Config, load_config
from foundation.fields import ConfigError
from foundation.ingredients import Ingredients
from widevalley.api import fit
from widevalley.result import Result

__all__ = ["Config", "ConfigError", "Ingredients", "Result", "fit", "load_config"]
