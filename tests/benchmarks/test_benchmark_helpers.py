"""The pure helpers behind benchmarks/p4_vs_ddp.py and benchmarks/p6_memory.py."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from foundation.data import load_dataset


def _load_common() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("wv_benchmarks_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


common = _load_common()

STATUS = """Name:\tray::Replica
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t 9502132 kB
VmSize:\t 9436596 kB
VmHWM:\t  812344 kB
VmRSS:\t  790000 kB
RssAnon:\t  500000 kB
RssFile:\t  280000 kB
RssShmem:\t   10000 kB
Threads:\t31
"""


# ---- time to target


def test_time_to_target_is_the_first_evaluation_that_reaches_it() -> None:
    evaluations = [(1.0, 0.2), (2.0, 0.55), (3.0, 0.5), (4.0, 0.7)]
    assert common.time_to_target(evaluations, 0.5) == 2.0
    assert common.time_to_target(evaluations, 0.6) == 4.0


def test_time_to_target_counts_equality_as_reached() -> None:
    assert common.time_to_target([(1.5, 0.25), (2.5, 0.639)], 0.639) == 2.5


def test_time_to_target_not_reached_is_none() -> None:
    assert common.time_to_target([(1.0, 0.2), (2.0, 0.3)], 0.31) is None
    assert common.time_to_target([], 0.0) is None


# ---- ratios and their median


def test_ratio_treats_not_reached_as_infinite() -> None:
    assert common.ratio(3.0, 12.0) == pytest.approx(0.25)
    assert common.ratio(None, 12.0) == math.inf
    with pytest.raises(ValueError):
        common.ratio(1.0, 0.0)


def test_median_of_ratios_takes_the_ratio_within_each_pair() -> None:
    assert common.median_of_ratios([(1.0, 2.0), (3.0, 1.0), (2.0, 2.0)]) == pytest.approx(1.0)
    # ratios 2, 0.1, 0.1 → 0.1; the median numerator over the median denominator is 0.2
    assert common.median_of_ratios([(2.0, 1.0), (1.0, 10.0), (10.0, 100.0)]) == pytest.approx(0.1)


def test_median_of_ratios_even_count_averages_the_middle_two() -> None:
    assert common.median_of_ratios([(1.0, 4.0), (1.0, 2.0)]) == pytest.approx(0.375)


def test_median_of_ratios_with_not_reached() -> None:
    # one of three not reached: the median is still a number
    assert common.median_of_ratios([(1.0, 4.0), (None, 2.0), (1.0, 2.0)]) == pytest.approx(0.5)
    # two of three not reached: not reached
    assert common.median_of_ratios([(1.0, 4.0), (None, 2.0), (None, 2.0)]) == math.inf
    # half of an even count not reached: not reached
    assert common.median_of_ratios([(1.0, 4.0), (None, 2.0)]) == math.inf
    with pytest.raises(ValueError):
        common.median_of_ratios([])


def test_format_ratio_and_seconds() -> None:
    assert common.format_ratio(math.inf) == "not reached"
    assert common.format_ratio(0.23456) == "0.235"
    assert common.format_seconds(None) == "not reached"
    assert common.format_seconds(4.219) == "4.22 s"


# ---- state size


def test_state_bytes_counts_parameters_buffers_and_momentum() -> None:
    # ResNet-18 (CIFAR stem): 11,173,962 parameters, 9,600 BatchNorm running statistics
    assert common.state_floats(11_173_962, 9_600) == 2 * 11_173_962 + 9_600
    assert common.state_bytes(11_173_962, 9_600) == 4 * (2 * 11_173_962 + 9_600)
    assert common.state_bytes(10, 2, momentum=False) == 48
    with pytest.raises(ValueError):
        common.state_bytes(-1, 0)


def test_model_counts_skips_integer_buffers() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    # Linear 3·4 + 4, BatchNorm weight and bias 4 + 4; running mean and var 4 + 4 (floats),
    # num_batches_tracked is an int64 counter and not state the replica sends
    assert common.model_counts(model) == (24, 8)


# ---- /proc/<pid>/status


def test_parse_vmhwm_reads_kilobytes_as_bytes() -> None:
    assert common.parse_vmhwm(STATUS) == 812_344 * 1024


def test_parse_proc_status_keeps_only_kb_fields() -> None:
    fields = common.parse_proc_status(STATUS)
    assert fields["VmRSS"] == 790_000 * 1024
    assert fields["RssShmem"] == 10_000 * 1024
    assert "Threads" not in fields and "Name" not in fields


def test_parse_vmhwm_without_the_line_fails() -> None:
    with pytest.raises(ValueError, match="VmHWM"):
        common.parse_vmhwm("Name:\tpython\nVmRSS:\t 10 kB\n")


def test_proc_status_of_this_process_has_a_peak_at_least_the_current_rss() -> None:
    fields = common.proc_status(__import__("os").getpid())
    assert fields["VmHWM"] >= fields["VmRSS"] > 0


# ---- the CIFAR-10 stand-in


def test_cifar_standin_is_read_by_the_service(tmp_path: Path) -> None:
    n = common.write_cifar_standin(tmp_path / "cifar-10-batches-py", per_batch=4)
    ds = load_dataset("cifar10", tmp_path, download=False)
    assert n == 20
    assert ds.train.x.shape == (20, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32
    assert int(ds.train.y.min()) >= 0 and int(ds.train.y.max()) <= 9
