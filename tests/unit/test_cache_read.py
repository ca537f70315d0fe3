"""Reading the Parquet data cache (foundation/data/cache.py): exact values, missing
values refused, and without pandas (Arrow's to_numpy imports it: 0.3 s of every replica
actor's start, P5 in docs/performance.md)."""

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


def test_a_shard_with_a_missing_label_is_corrupt(tmp_path: Path) -> None:
    x, _ = mnist1d_like(2)
    meta = _shard_metadata("mnist1d", "train", x.dtype, 2, 0, 1)
    table = pa.table({
        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 40),
        "y": pa.array([3, None], pa.int64()),
    }).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})  # fmt: skip
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet")
    with pytest.raises(DatasetError, match="corrupt: it has missing values"):
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
