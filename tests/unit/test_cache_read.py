"""Reading the Parquet data cache (foundation/data/cache.py): exact values, missing
values refused, and without pandas (Arrow's to_numpy imports it, in every replica
actor's start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from foundation.data import DatasetError
from foundation.data.cache import METADATA_KEY, _shard_metadata, read_split, write_split

REPO = Path(__file__).resolve().parents[2]


def mnist1d_like(rows: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(rows * 40, dtype=np.float32).reshape(rows, 40) / 7
    return x, np.arange(rows, dtype=np.int64) % 10


def test_a_split_reads_back_exactly_across_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("foundation.data.cache.SHARD_ROWS", 3)  # 7 rows: shards of 3, 3, 1
    x, y = mnist1d_like(7)
    write_split(tmp_path, "train", "mnist1d", (x, y))
    split = read_split(tmp_path / "train", "mnist1d")
    assert torch.equal(split.x, torch.from_numpy(x)) and torch.equal(split.y, torch.from_numpy(y))
    assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64


def test_an_empty_split_reads_back_empty(tmp_path: Path) -> None:
    write_split(tmp_path, "test", "mnist1d", mnist1d_like(0))
    split = read_split(tmp_path / "test", "mnist1d")
    assert split.x.shape == (0, 40) and split.y.shape == (0,)


def write_shard(split_dir: Path, x: pa.Array, y: pa.Array, raw_dtype: str = "float32") -> None:
    meta = _shard_metadata("mnist1d", "train", np.dtype(raw_dtype), len(y), 0, 1)
    table = pa.table({"x": x, "y": y})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    split_dir.mkdir()
    pq.write_table(table, split_dir / "part-00000.parquet")


def rows_of_40(values: list[list[float] | None], value_type: pa.DataType) -> pa.Array:
    return pa.array(values, pa.list_(value_type, 40))


@pytest.mark.parametrize("missing", ["a label", "an input row", "one input value"])
def test_a_shard_with_a_missing_value_is_corrupt(tmp_path: Path, missing: str) -> None:
    rows: list[list[float] | None] = [[1.0] * 40, [2.0] * 40, [3.0] * 40]
    labels: list[int | None] = [0, 1, 2]
    if missing == "a label":
        labels[1] = None
    elif missing == "an input row":  # flatten() drops it: the labels after it would shift
        rows[1] = None
    else:
        rows[1] = [2.0] * 39 + [None]  # type: ignore[list-item]
    write_shard(tmp_path / "train", rows_of_40(rows, pa.float32()), pa.array(labels, pa.int64()))
    with pytest.raises(DatasetError, match="corrupt: it has missing values"):
        read_split(tmp_path / "train", "mnist1d")


def test_a_shard_whose_raw_dtype_is_not_a_number_is_corrupt(tmp_path: Path) -> None:
    rows = rows_of_40([[True] * 40, [False] * 40], pa.bool_())
    write_shard(tmp_path / "train", rows, pa.array([0, 1], pa.int64()), raw_dtype="bool")
    with pytest.raises(DatasetError, match="raw_dtype bool is not a number type"):
        read_split(tmp_path / "train", "mnist1d")


READ_IN_A_FRESH_PROCESS = """
import sys
from pathlib import Path
from foundation.data.cache import read_split
split = read_split(Path(sys.argv[1]), "mnist1d")
print(len(split.y), "pandas" in sys.modules, "pyarrow.dataset" in sys.modules)
"""


def test_reading_the_cache_imports_neither_pandas_nor_arrow_datasets(tmp_path: Path) -> None:
    write_split(tmp_path, "train", "mnist1d", mnist1d_like(5))
    done = subprocess.run(
        [sys.executable, "-c", READ_IN_A_FRESH_PROCESS, str(tmp_path / "train")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["5", "False", "False"], done.stderr
