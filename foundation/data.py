"""Datasets as tensors, cached as Parquet shards.

Layout of the cache (one directory per split, written whole or not at all)::

    <root>/<name>/train/part-00000.parquet, part-00001.parquet, ...
    <root>/<name>/test/part-00000.parquet, ...

Each shard holds at most ``SHARD_ROWS`` rows with two columns: ``x``, a fixed-size list of
the raw values (float32 for mnist1d, uint8 pixels in C·H·W order for images), and ``y``
(int64). The schema metadata key ``widevalley.dataset`` holds JSON with the input shape,
raw dtype, split size and shard count, so a shard can be read and checked on its own.

Raw sources: mnist1d is generated offline by the ``mnist1d`` package; MNIST, Fashion-MNIST
and CIFAR-10 are converted from their official on-disk files in the layout torchvision
creates (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``).
torchvision is only used, lazily, to download those raw files.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import random
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

DATASETS: tuple[str, ...] = ("mnist1d", "mnist", "fashion_mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")
SHARD_ROWS = 10_000
METADATA_KEY = b"widevalley.dataset"
# Bump when the shard layout changes, so old caches are reported instead of misread.
CACHE_VERSION = 1

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist1d": (40,),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
# The usual per-channel (mean, std) of the training pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
NUM_CLASSES = 10  # all four datasets have ten classes

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


class DatasetError(ValueError):
    """A dataset cannot be loaded; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    """Inputs, float32 [N, *input_shape], already normalized."""
    y: torch.Tensor
    """Class labels, int64 [N]."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int


# Raw data of one split before normalization: x [N, prod(input_shape)], y int64 [N].
RawSplit = tuple[np.ndarray, np.ndarray]


def load_dataset(name: str, root: str | os.PathLike[str], *, download: bool = True) -> Dataset:
    """Load a dataset from the Parquet cache under root, building the cache if needed.

    download only matters for the image datasets (mnist1d is generated locally): when their
    raw files are missing, True fetches them with torchvision and False raises DatasetError.
    """
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; valid names are {', '.join(DATASETS)}.")
    dataset_dir = Path(root) / name
    missing = [split for split in SPLITS if not (dataset_dir / split).is_dir()]
    if missing:
        raw = _build_raw(name, Path(root), download=download)
        try:
            for split in missing:
                _write_split(dataset_dir, split, name, raw[split])
        except OSError as exc:
            raise DatasetError(f"Cannot write the dataset cache in {dataset_dir} ({exc}).") from exc
    train, test = (_read_split(dataset_dir / split, name) for split in SPLITS)
    return Dataset(name, train, test, INPUT_SHAPES[name], NUM_CLASSES)


def validation_split(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a deterministic validation set out of train; returns (train_rest, val)."""
    n = len(train.y)
    n_val = round(n * fraction)
    if not 0.0 < fraction < 1.0 or not 0 < n_val < n:
        raise ValueError(
            f"validation fraction must leave both parts non-empty, got {fraction} of {n} rows"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted indices keep the original row order inside each part: the seed decides only
    # membership, and the data stream does its own shuffling.
    val_idx, rest_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return _take(train, rest_idx), _take(train, val_idx)


VALIDATION_SEED = 0  # one split for every run, so runs selected on it are comparable


def held_out(data: Dataset, fraction: float) -> Dataset:
    """With fraction > 0, train on the rest of the training set and report on the held-out
    part where the test set would be: hyperparameters get chosen without seeing test."""
    if fraction <= 0:
        return data
    rest, val = validation_split(data.train, fraction, VALIDATION_SEED)
    return Dataset(data.name, rest, val, data.input_shape, data.num_classes)


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.x[idx], split.y[idx])


# ---------------------------------------------------------------- raw sources


def _build_raw(name: str, root: Path, *, download: bool) -> dict[str, RawSplit]:
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


# ---------------------------------------------------------------- Parquet cache


def _write_split(dataset_dir: Path, split: str, name: str, raw: RawSplit) -> None:
    """Write one split to a temporary directory and rename it into place, so a crash
    leaves either no split directory or a complete one (a stray temp dir is ignored)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=dataset_dir))
    try:
        x, y = raw
        num_shards = max(1, math.ceil(len(y) / SHARD_ROWS))
        for shard in range(num_shards):
            rows = slice(shard * SHARD_ROWS, (shard + 1) * SHARD_ROWS)
            meta = _shard_metadata(name, split, x.dtype, len(y), shard, num_shards)
            _write_shard(tmp / _shard_name(shard), x[rows], y[rows], meta)
        _rename_into_place(tmp, dataset_dir / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp: Path, final: Path) -> None:
    try:
        tmp.rename(final)
    except OSError:
        # Another process (e.g. a second replica on this node) finished the same split
        # first; its copy is identical, so keep it and drop ours.
        if not final.is_dir():
            raise


_META_KEYS = frozenset(
    {"version", "name", "split", "input_shape", "raw_dtype", "num_rows", "shard", "num_shards"}
)


def _shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _shard_metadata(
    name: str, split: str, dtype: np.dtype, num_rows: int, shard: int, num_shards: int
) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "name": name,
        "split": split,
        "input_shape": list(INPUT_SHAPES[name]),
        "raw_dtype": str(dtype),
        "num_rows": num_rows,
        "shard": shard,
        "num_shards": num_shards,
    }


def _write_shard(path: Path, x: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> None:
    width = x.shape[1]
    x_col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), width)
    table = pa.table({"x": x_col, "y": pa.array(y, pa.int64())})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    with path.open("wb") as f:
        pq.write_table(table, f)
        f.flush()
        # The rename that publishes the split must not land on disk before the data.
        os.fsync(f.fileno())


def _read_split(split_dir: Path, name: str) -> Split:
    shards = sorted(split_dir.glob("part-*.parquet"))
    if not shards:
        raise _corrupt(split_dir, "it has no shards")
    tables = [_read_shard(path) for path in shards]
    metas = [_metadata(table, path) for table, path in zip(tables, shards, strict=True)]
    _check_shards(split_dir, name, shards, tables, metas)
    return _to_split(tables, metas[0], name)


def _read_shard(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _corrupt(path, f"Parquet cannot read it ({exc})") from exc


def _metadata(table: pa.Table, path: Path) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not _META_KEYS.issubset(meta):
        raise _corrupt(path, "its widevalley metadata is missing or incomplete")
    return meta


def _check_shards(
    split_dir: Path,
    name: str,
    shards: list[Path],
    tables: list[pa.Table],
    metas: list[dict[str, Any]],
) -> None:
    first = metas[0]
    wanted = {"version": CACHE_VERSION, "name": name, "input_shape": list(INPUT_SHAPES[name])}
    if any(first[key] != value for key, value in wanted.items()):
        raise _corrupt(split_dir, f"it is not a version-{CACHE_VERSION} cache of {name}")
    expected_names = [_shard_name(i) for i in range(first["num_shards"])]
    if [p.name for p in shards] != expected_names:
        raise _corrupt(split_dir, f"it should hold exactly {', '.join(expected_names)}")
    x_type = pa.list_(pa.from_numpy_dtype(first["raw_dtype"]), math.prod(first["input_shape"]))
    expected_schema = pa.schema({"x": x_type, "y": pa.int64()})
    for i, (table, meta) in enumerate(zip(tables, metas, strict=True)):
        # Every shard carries the same metadata apart from its own index.
        if meta["shard"] != i or {**meta, "shard": 0} != {**first, "shard": 0}:
            raise _corrupt(shards[i], "its metadata disagrees with the other shards")
        if not table.schema.equals(expected_schema, check_metadata=False):
            raise _corrupt(shards[i], f"its columns are not {expected_schema}")
    if sum(t.num_rows for t in tables) != first["num_rows"]:
        raise _corrupt(split_dir, f"its shards do not add up to {first['num_rows']} rows")


def _to_split(tables: list[pa.Table], meta: dict[str, Any], name: str) -> Split:
    table = pa.concat_tables(tables)
    shape = tuple(meta["input_shape"])
    # flatten() (not .values) honours chunk offsets, so slices and concatenations are safe.
    x_flat = table.column("x").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    x = x_flat.astype(np.dtype(meta["raw_dtype"]), copy=False).reshape(-1, *shape)
    y = table.column("y").to_numpy().astype(np.int64, copy=False)
    return Split(_normalize(name, x), torch.from_numpy(y.copy()))


def _normalize(name: str, x: np.ndarray) -> torch.Tensor:
    if name not in NORMALIZATION:
        return torch.from_numpy(x.astype(np.float32))  # mnist1d: stored ready to use
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in NORMALIZATION[name])
    return (torch.from_numpy(x.astype(np.float32)) / 255.0 - mean) / std


def _corrupt(path: Path, why: str) -> DatasetError:
    return DatasetError(f"The dataset cache {path} is corrupt: {why}; delete it to rebuild.")
