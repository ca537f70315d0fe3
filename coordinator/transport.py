"""How weights move between replicas and the coordinator (the object-store transport).

Each replica sends ONE contiguous float32 buffer per round (its FlatModule vector) as
numpy, which Ray serializes without pickling per tensor and, on the receiving side,
maps read-only from the shared-memory object store without a copy.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor


def readonly_tensor(array: np.ndarray) -> Tensor:
    """A tensor over a (possibly read-only, object-store backed) array, without a copy.

    torch warns about non-writable arrays because writing through the tensor would be
    undefined; callers here only read it (the center is pulled toward, never changed).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))
