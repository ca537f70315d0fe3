"""Datasets: mnist1d generation, raw-file conversion, the Parquet cache and its failures.

Image datasets are tested on tiny stand-ins written here in the exact official on-disk
formats (idx files, CIFAR-10 python pickles), so nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import shutil
import struct
import sys
import types
from pathlib import Path
from typing import Any

import mnist1d.data
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import foundation.data.cache
from foundation.data import DATASETS, DatasetError, Split, load_dataset, validation_split

# ------------------------------------------------------------------ raw-format writers

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
RAW_DIRS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
}


def idx_bytes(array: np.ndarray) -> bytes:
    # Magic: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions; then big-endian dims.
    magic = {3: 0x00000803, 1: 0x00000801}[array.ndim]
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(idx_bytes(array)))
    else:
        path.write_bytes(idx_bytes(array))


def tiny_idx_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three train and two test images, black except for a few known pixels."""
    train = np.zeros((3, 28, 28), np.uint8)
    train[0, 5, 7] = 255
    train[1, 0, 0] = 51
    train[2, 27, 27] = 128
    test = np.zeros((2, 28, 28), np.uint8)
    test[1, 10, 20] = 255
    return {
        "train": (train, np.array([3, 0, 9], np.uint8)),
        "test": (test, np.array([7, 1], np.uint8)),
    }


def write_tiny_idx(raw_dir: Path, *, gz: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = tiny_idx_data()
    for split, (images, labels) in data.items():
        images_name, labels_name = IDX_NAMES[split]
        write_idx(raw_dir / images_name, images, gz=gz)
        write_idx(raw_dir / labels_name, labels, gz=gz)
    return data


def py2_style_pickle(batch: dict[bytes, Any]) -> bytes:
    # The official batches were pickled by Python 2 and name numpy.core.multiarray; NumPy 2
    # writes numpy._core, so rename it to test what the real files contain.
    return pickle.dumps(batch, protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )


def write_tiny_cifar(raw_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five train batches of two rows and a test batch of three, with random pixels."""
    rng = np.random.default_rng(0)
    raw_dir.mkdir(parents=True)
    files = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    rows: dict[str, tuple[np.ndarray, list[int]]] = {}
    for name, n in files.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        rows[name] = (data, labels)
    rows["data_batch_1"][0][0, 1024 + 2 * 32 + 3] = 255  # green, row 2, column 3
    rows["data_batch_3"][0][1, 2048 + 31 * 32 + 31] = 0  # blue, last pixel
    for name, (data, labels) in rows.items():
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        batch[b"filenames"] = [f"{name}_{i}.png".encode() for i in range(len(labels))]
        (raw_dir / name).write_bytes(py2_style_pickle(batch))
    train = [rows[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([d for d, _ in train]), np.concatenate([lb for _, lb in train])),
        "test": (rows["test_batch"][0], np.array(rows["test_batch"][1])),
    }


def normalized(value: int, mean: float, std: float) -> float:
    return (value / 255 - mean) / std


# ------------------------------------------------------------------ mnist1d


def test_mnist1d_builds_shards_then_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated: list[dict[str, Any]] = []
    real_make_dataset = mnist1d.data.make_dataset

    def recording_make_dataset(args: Any) -> dict[str, Any]:
        generated.append(real_make_dataset(args))
        return generated[-1]

    monkeypatch.setattr(mnist1d.data, "make_dataset", recording_make_dataset)
    np.random.seed(7)
    random.seed(7)
    ds = load_dataset("mnist1d", tmp_path)
    # mnist1d reseeds the global RNGs; loading must leave the caller's streams alone.
    np_draw, py_draw = np.random.random(), random.random()
    np.random.seed(7)
    random.seed(7)
    assert (np_draw, py_draw) == (np.random.random(), random.random())

    assert len(generated) == 1
    assert (ds.input_shape, ds.num_classes) == ((40,), 10)
    assert ds.train.x.shape == (4000, 40) and ds.test.x.shape == (1000, 40)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.y.shape == (4000,) and ds.test.y.shape == (1000,)
    assert set(ds.train.y.tolist()) == set(range(10))
    assert int(ds.test.y.min()) >= 0 and int(ds.test.y.max()) <= 9
    assert np.array_equal(ds.train.x.numpy(), generated[0]["x"].astype(np.float32))
    assert np.array_equal(ds.test.y.numpy(), generated[0]["y_test"])

    shard = pq.read_table(tmp_path / "mnist1d" / "train" / "part-00000.parquet")
    assert shard.schema.field("x").type == pa.list_(pa.float32(), 40)
    assert shard.schema.field("y").type == pa.int64()
    meta = json.loads(shard.schema.metadata[b"widevalley.dataset"])
    assert (meta["input_shape"], meta["raw_dtype"]) == ([40], "float32")

    def must_not_generate(args: Any) -> None:
        raise AssertionError("the second load must read the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_generate)
    again = load_dataset("mnist1d", tmp_path, download=False)
    for first, second in ((ds.train, again.train), (ds.test, again.test)):
        assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


# ------------------------------------------------------------------ image conversions


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("name", "mean", "std"), [("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.2860, 0.3530)]
)
def test_idx_conversion_round_trips(
    tmp_path: Path, name: str, mean: float, std: float, gz: bool
) -> None:
    raw_dir = tmp_path / RAW_DIRS[name]
    raw = write_tiny_idx(raw_dir, gz=gz)
    ds = load_dataset(name, tmp_path, download=False)

    assert (ds.input_shape, ds.num_classes) == ((1, 28, 28), 10)
    assert ds.train.x.shape == (3, 1, 28, 28) and ds.test.x.shape == (2, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32
    assert ds.train.y.tolist() == [3, 0, 9] and ds.test.y.tolist() == [7, 1]
    assert ds.train.x[0, 0, 5, 7].item() == pytest.approx(normalized(255, mean, std), abs=1e-5)
    assert ds.train.x[1, 0, 0, 0].item() == pytest.approx(normalized(51, mean, std), abs=1e-5)
    assert ds.train.x[2, 0, 27, 27].item() == pytest.approx(normalized(128, mean, std), abs=1e-5)
    assert ds.test.x[0, 0, 0, 0].item() == pytest.approx(-mean / std, abs=1e-5)
    if name == "mnist":  # one value worked out by hand: (1 - 0.1307) / 0.3081
        assert ds.train.x[0, 0, 5, 7].item() == pytest.approx(2.82149, abs=1e-4)
    pixels = (ds.test.x * std + mean) * 255
    assert np.array_equal(pixels.round().to(torch.uint8).numpy()[:, 0], raw["test"][0])

    # The cache alone is enough from now on.
    shutil.rmtree(raw_dir)
    again = load_dataset(name, tmp_path, download=False)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)


def test_cifar10_conversion_round_trips(tmp_path: Path) -> None:
    raw = write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path, download=False)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    assert (ds.input_shape, ds.num_classes) == ((3, 32, 32), 10)
    assert ds.train.x.shape == (10, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    # Batches 1..5 in order, labels with them.
    assert ds.train.y.tolist() == raw["train"][1].tolist()
    assert ds.test.y.tolist() == raw["test"][1].tolist()
    assert ds.train.x[0, 1, 2, 3].item() == pytest.approx((1 - 0.4822) / 0.2435, abs=1e-5)
    assert ds.train.x[5, 2, 31, 31].item() == pytest.approx(-0.4465 / 0.2616, abs=1e-5)
    pixels = (ds.train.x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255
    assert np.array_equal(pixels.round().to(torch.uint8).reshape(10, -1).numpy(), raw["train"][0])


def test_large_splits_are_sharded_and_read_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(foundation.data.cache, "SHARD_ROWS", 2)
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", tmp_path, download=False)
    train_dir = tmp_path / "mnist" / "train"
    assert sorted(p.name for p in train_dir.iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert [pq.read_metadata(p).num_rows for p in sorted(train_dir.iterdir())] == [2, 1]
    assert ds.train.y.tolist() == [3, 0, 9]

    # A lost shard is reported, not silently skipped.
    (train_dir / "part-00001.parquet").unlink()
    with pytest.raises(DatasetError, match="part-00001"):
        load_dataset("mnist", tmp_path, download=False)


# ------------------------------------------------------------------ errors


def test_unknown_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("imagenet", tmp_path)
    assert "imagenet" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_raw_files_without_download_name_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="download=False") as info:
        load_dataset(name, tmp_path, download=False)
    assert str(tmp_path / RAW_DIRS[name]) in str(info.value)
    assert not (tmp_path / name).exists()


def test_missing_torchvision_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DatasetError, match="pip install torchvision") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


def fake_torchvision(monkeypatch: pytest.MonkeyPatch, mnist_cls: type) -> list[tuple[str, bool]]:
    calls: list[tuple[str, bool]] = []
    datasets = types.ModuleType("torchvision.datasets")

    def recording(root: str, train: bool, download: bool) -> Any:
        assert download
        calls.append((root, train))
        return mnist_cls(root, train, download)

    datasets.MNIST = recording  # type: ignore[attr-defined]
    torchvision = types.ModuleType("torchvision")
    torchvision.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls


def test_download_fetches_raw_files_with_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeMNIST:  # writes the raw files where torchvision's MNIST puts them
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_tiny_idx(Path(root) / "MNIST" / "raw", gz=True)

    calls = fake_torchvision(monkeypatch, FakeMNIST)
    ds = load_dataset("mnist", tmp_path)
    assert {train for _, train in calls} == {True, False}
    assert all(Path(root) == tmp_path for root, _ in calls)
    assert ds.train.y.tolist() == [3, 0, 9]


def test_failed_download_is_a_dataset_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OfflineMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    fake_torchvision(monkeypatch, OfflineMNIST)
    with pytest.raises(DatasetError, match="Error downloading") as info:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


@pytest.mark.parametrize("damage", ["cut", "extra"])
def test_truncated_or_padded_idx_file(tmp_path: Path, damage: str) -> None:
    raw_dir = tmp_path / "MNIST" / "raw"
    write_tiny_idx(raw_dir)
    images = raw_dir / "train-images-idx3-ubyte"
    content = images.read_bytes()
    images.write_bytes(content[:-100] if damage == "cut" else content + b"\0" * 5)
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(images) in str(info.value)
    assert not (tmp_path / "mnist").exists()


def test_truncated_gzip_idx_file(tmp_path: Path) -> None:
    raw_dir = tmp_path / "MNIST" / "raw"
    write_tiny_idx(raw_dir, gz=True)
    labels = raw_dir / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:15])
    with pytest.raises(DatasetError, match="cannot be read") as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(labels) in str(info.value)


def test_idx_file_with_wrong_magic(tmp_path: Path) -> None:
    raw_dir = tmp_path / "FashionMNIST" / "raw"
    write_tiny_idx(raw_dir)
    # An images file where the labels should be: valid idx, wrong number of dimensions.
    shutil.copy(raw_dir / "train-images-idx3-ubyte", raw_dir / "train-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="bad header"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    raw_dir = tmp_path / "cifar-10-batches-py"
    write_tiny_cifar(raw_dir)
    # A tampered batch naming an arbitrary function must not be unpickled.
    (raw_dir / "data_batch_2").write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global") as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(raw_dir / "data_batch_2") in str(info.value)


def test_corrupt_cache_shard(tmp_path: Path) -> None:
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    load_dataset("mnist", tmp_path, download=False)
    shard = tmp_path / "mnist" / "test" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DatasetError, match="corrupt") as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(shard) in str(info.value)


# ------------------------------------------------------------------ half-written caches


def test_leftover_temp_dir_is_not_a_cache(tmp_path: Path) -> None:
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    # What a crash mid-write leaves behind: a temp dir with a bogus shard, no train/.
    leftover = tmp_path / "mnist" / ".train.tmp-crashed"
    leftover.mkdir(parents=True)
    (leftover / "part-00000.parquet").write_bytes(b"PAR1 half a file")
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.train.y.tolist() == [3, 0, 9]
    assert (tmp_path / "mnist" / "train" / "part-00000.parquet").is_file()


def test_crash_while_writing_leaves_no_split_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_idx(tmp_path / "MNIST" / "raw")
    real_write_shard = foundation.data.cache._write_shard

    def crash_on_test_split(path: Path, x: Any, y: Any, meta: dict[str, Any]) -> None:
        real_write_shard(path, x, y, meta)
        if meta["split"] == "test":
            raise OSError("disk full")

    monkeypatch.setattr(foundation.data.cache, "_write_shard", crash_on_test_split)
    with pytest.raises(DatasetError, match="disk full") as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(tmp_path / "mnist") in str(info.value)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == ["train"]

    monkeypatch.setattr(foundation.data.cache, "_write_shard", real_write_shard)
    ds = load_dataset("mnist", tmp_path, download=False)
    assert ds.test.y.tolist() == [7, 1]


# ------------------------------------------------------------------ validation split


def numbered_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 10)


def test_validation_split_is_deterministic_and_disjoint() -> None:
    train = numbered_split(100)
    rest, val = validation_split(train, 0.2, seed=3)
    assert (len(rest.y), len(val.y)) == (80, 20)
    rest_ids, val_ids = set(rest.x[:, 0].tolist()), set(val.x[:, 0].tolist())
    assert rest_ids.isdisjoint(val_ids) and len(rest_ids | val_ids) == 100
    assert torch.equal(rest.y, rest.x[:, 0].long() % 10)  # rows keep their labels

    rest2, val2 = validation_split(train, 0.2, seed=3)
    assert torch.equal(val.x, val2.x) and torch.equal(rest.y, rest2.y)
    _, other = validation_split(train, 0.2, seed=4)
    assert not torch.equal(val.x, other.x)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, 0.001])
def test_validation_split_refuses_empty_parts(fraction: float) -> None:
    with pytest.raises(ValueError, match="validation fraction"):
        validation_split(numbered_split(100), fraction, seed=0)
