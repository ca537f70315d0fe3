"""The Parquet cache of a dataset: one directory per split, written whole or not at all.

Layout::

    <root>/<name>/train/part-00000.parquet, part-00001.parquet, ...
    <root>/<name>/test/part-00000.parquet, ...

Each shard holds at most ``SHARD_ROWS`` rows with two columns: ``x``, a fixed-size list of
the raw values (float32 for mnist1d, uint8 pixels in C·H·W order for images), and ``y``
(int64). The schema metadata key ``widevalley.dataset`` holds JSON with the input shape,
raw dtype, split size and shard count, so a shard can be read and checked on its own.

write_split stores what foundation.data.sources produced; read_split checks every shard
against the others and returns the normalized Split. SHARD_ROWS and _write_shard are
looked up here at call time, so tests patch them on this module (patching the re-export
in foundation.data would not reach write_split).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from foundation.data.catalog import INPUT_SHAPES, NORMALIZATION, DatasetError, RawSplit, Split

SHARD_ROWS = 10_000
METADATA_KEY = b"widevalley.dataset"
# Bump when the shard layout changes, so old caches are reported instead of misread.
CACHE_VERSION = 1


def write_split(dataset_dir: Path, split: str, name: str, raw: RawSplit) -> None:
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


def read_split(split_dir: Path, name: str) -> Split:
    """The split cached in split_dir, normalized; DatasetError if any shard is off."""
    shards = sorted(split_dir.glob("part-*.parquet"))
    if not shards:
        raise _corrupt(split_dir, "it has no shards")
    tables = [_read_shard(path) for path in shards]
    metas = [_metadata(table, path) for table, path in zip(tables, shards, strict=True)]
    _check_shards(split_dir, name, shards, tables, metas)
    return _to_split(split_dir, tables, metas[0], name)


def _read_shard(path: Path) -> pa.Table:
    # ParquetFile, not pq.read_table: that one imports pyarrow.dataset and, with it,
    # pandas, in every replica actor's start (a heavy import).
    try:
        with pq.ParquetFile(path) as shard:
            return shard.read()
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


def _to_split(split_dir: Path, tables: list[pa.Table], meta: dict[str, Any], name: str) -> Split:
    table = pa.concat_tables(tables)
    shape = tuple(meta["input_shape"])
    # flatten() (not .values) honours chunk offsets, so slices and concatenations are safe.
    # A missing x row vanishes in flatten(): checked before, or every later label shifts.
    x_rows, y_values = table.column("x").combine_chunks(), table.column("y").combine_chunks()
    x_values = x_rows.flatten()
    if x_rows.null_count or x_values.null_count or y_values.null_count:
        raise _corrupt(split_dir, "it has missing values")
    raw = np.dtype(meta["raw_dtype"])
    if raw.kind not in "iuf":  # _as_numpy reads fixed-width numbers, not Arrow's bit-packed bools
        raise _corrupt(split_dir, f"its raw_dtype {raw} is not a number type")
    x = _as_numpy(x_values, raw).reshape(-1, *shape)
    y = _as_numpy(y_values, np.dtype(np.int64))
    return Split(_normalize(name, x), torch.from_numpy(y.copy()))


def _as_numpy(values: pa.Array, dtype: np.dtype) -> np.ndarray:
    """A primitive array without nulls as a (read-only) numpy view of its data buffer.
    Not Arrow's to_numpy(): it imports pandas in every replica actor's start. The schema
    was checked against `dtype` (_check_shards)."""
    if len(values) == 0:  # an empty array may have no data buffer at all
        return np.empty(0, dtype=dtype)
    start = values.offset * dtype.itemsize
    return np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=start)


def _normalize(name: str, x: np.ndarray) -> torch.Tensor:
    if name not in NORMALIZATION:
        return torch.from_numpy(x.astype(np.float32))  # mnist1d: stored ready to use
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in NORMALIZATION[name])
    return (torch.from_numpy(x.astype(np.float32)) / 255.0 - mean) / std


def _corrupt(path: Path, why: str) -> DatasetError:
    return DatasetError(f"The dataset cache {path} is corrupt: {why}; delete it to rebuild.")
