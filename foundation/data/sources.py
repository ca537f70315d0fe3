"""Raw sources: each dataset's official files, or its generator, as uint8/float32 arrays.

mnist1d is generated offline by the ``mnist1d`` package; MNIST, Fashion-MNIST and CIFAR-10
are converted from their official on-disk files in the layout torchvision creates
(``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``): idx
files (plain or gzipped) and the CIFAR-10 python pickles, the latter through an unpickler
that refuses every global but numpy's array reconstruction. torchvision is only used,
lazily, to download those raw files. build_raw is the entry point; what it returns is
written to the Parquet cache by foundation.data.cache.
"""

from __future__ import annotations

import gzip
import math
import pickle
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np

from foundation.data.catalog import NUM_CLASSES, SPLITS, DatasetError, RawSplit

# torchvision's folder for each image dataset's raw files, relative to root.
_RAW_DIRS: dict[str, str] = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}
_TORCHVISION_CLASSES: dict[str, str] = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
}
_IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
# idx magic numbers: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
_IDX_MAGIC: dict[int, int] = {3: 0x00000803, 1: 0x00000801}


def build_raw(name: str, root: Path, *, download: bool) -> dict[str, RawSplit]:
    """Both splits of dataset name, raw, from the files under root (or generated).

    download=True fetches missing image files with torchvision; False raises DatasetError.
    """
    if name == "mnist1d":
        return _make_mnist1d()
    raw_dir = root / _RAW_DIRS[name]
    if not _raw_files_present(name, raw_dir):
        if not download:
            raise DatasetError(
                f"Raw {name} files are missing in {raw_dir} and download=False; "
                "place them there or allow download."
            )
        _download_raw(name, root, raw_dir)
    if name == "cifar10":
        return {split: _read_cifar_split(raw_dir, split) for split in SPLITS}
    return {split: _read_idx_split(raw_dir, split) for split in SPLITS}


def _make_mnist1d() -> dict[str, RawSplit]:
    import mnist1d.data

    # make_dataset reseeds Python's and NumPy's global RNGs; put them back so that loading
    # data never changes the random stream of the run that asked for it.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # No further normalization: make_dataset already centers the signals and scales them
    # to unit standard deviation, and keeping its values keeps results comparable with the
    # MNIST-1D paper.
    return {
        "train": (np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64)),
        "test": (np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int64)),
    }


def _raw_files_present(name: str, raw_dir: Path) -> bool:
    if name == "cifar10":
        names = [f for files in _CIFAR_FILES.values() for f in files]
        return all((raw_dir / f).is_file() for f in names)
    return all(_idx_path(raw_dir, f) is not None for files in _IDX_FILES.values() for f in files)


def _download_raw(name: str, root: Path, raw_dir: Path) -> None:
    try:
        from torchvision import datasets as tv_datasets
    except ImportError as exc:
        raise DatasetError(
            f"Raw {name} files are missing in {raw_dir} and torchvision is not installed; "
            f"pip install torchvision, or place the raw files in {raw_dir}."
        ) from exc
    dataset_cls = getattr(tv_datasets, _TORCHVISION_CLASSES[name])
    try:
        # Only the raw files are wanted; both splits are asked for in case a torchvision
        # version fetches them separately.
        for train in (True, False):
            dataset_cls(str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises a variety of network and checksum errors
        raise DatasetError(
            f"Downloading {name} with torchvision failed ({exc}); "
            f"place the raw files in {raw_dir} instead."
        ) from exc
    if not _raw_files_present(name, raw_dir):
        raise DatasetError(f"torchvision downloaded {name} but its raw files are not in {raw_dir}.")


def _idx_path(raw_dir: Path, filename: str) -> Path | None:
    """The idx file, plain or gzipped (torchvision keeps both), or None if neither exists."""
    for candidate in (raw_dir / filename, raw_dir / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_split(raw_dir: Path, split: str) -> RawSplit:
    images_name, labels_name = _IDX_FILES[split]
    images = _read_idx(raw_dir, images_name, ndim=3)
    labels = _read_idx(raw_dir, labels_name, ndim=1)
    path = raw_dir / images_name
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{path} holds {images.shape[1:]} images, expected 28x28.")
    if len(images) != len(labels):
        raise DatasetError(f"{path} has {len(images)} images but {len(labels)} labels.")
    return images.reshape(len(images), -1), _checked_labels(labels, path)


def _read_idx(raw_dir: Path, filename: str, *, ndim: int) -> np.ndarray:
    path = _idx_path(raw_dir, filename)
    if path is None:
        raise DatasetError(f"{raw_dir / filename} is missing.")
    try:
        content = path.read_bytes()
        if path.suffix == ".gz":
            content = gzip.decompress(content)
    except (OSError, EOFError) as exc:  # gzip raises EOFError for a truncated stream
        raise DatasetError(f"{path} cannot be read ({exc}); delete it and download again.") from exc
    return _parse_idx(content, path, ndim)


def _parse_idx(content: bytes, path: Path, ndim: int) -> np.ndarray:
    header_len = 4 + 4 * ndim
    if len(content) < header_len or struct.unpack(">I", content[:4])[0] != _IDX_MAGIC[ndim]:
        raise DatasetError(f"{path} is not an idx file of {ndim}-d unsigned bytes (bad header).")
    dims = struct.unpack(f">{ndim}I", content[4:header_len])
    if len(content) != header_len + math.prod(dims):
        raise DatasetError(
            f"{path} is truncated or corrupt: its header says {dims} but it holds "
            f"{len(content) - header_len} bytes of data; delete it and download again."
        )
    return np.frombuffer(content, np.uint8, offset=header_len).reshape(dims)


def _read_cifar_split(raw_dir: Path, split: str) -> RawSplit:
    parts = [_read_cifar_batch(raw_dir / f) for f in _CIFAR_FILES[split]]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches and refuses any other global, so a tampered file
    cannot run code: the batches need only numpy's array reconstruction."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # what the official files name
            ("numpy._core.multiarray", "_reconstruct"),  # what NumPy 2 writes
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> RawSplit:
    try:
        with path.open("rb") as f:
            # encoding="bytes" is what the official format documents (Python 2 pickles).
            batch = _CifarUnpickler(f, encoding="bytes").load()
        x = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path} is not a readable CIFAR-10 batch ({exc}); delete it and download again."
        ) from exc
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(labels):
        raise DatasetError(f"{path} does not hold uint8 [N, 3072] images with N labels.")
    return x, _checked_labels(labels, path)


def _checked_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{path} has labels outside 0..{NUM_CLASSES - 1}.")
    return labels.astype(np.int64)
