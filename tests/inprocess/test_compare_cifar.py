"""Tier 2: the CIFAR-10 comparison protocol, on stand-in data in the official format.

The comparison job's fan-out over Ray (sweep, final seeds, table, reuse) is tested on
MNIST-1D in tests/localray/test_compare.py; here, in this process, the CIFAR-10 protocol
as shipped plans its runs and one of them trains and is measured through the same task
a Ray worker runs (jobs.compare.task.run_job) on CIFAR-10 files made here.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from foundation.config import to_toml
from jobs import CONFIG_DIR
from jobs.compare.methods import TRAINED
from jobs.compare.plan import final_jobs, sweep_jobs, untuned
from jobs.compare.protocol import FlatnessSpec, load_protocol
from jobs.compare.task import run_job

pytestmark = pytest.mark.slow  # a whole CIFAR-shaped comparison, the slowest in-process test
CIFAR = CONFIG_DIR / "compare_cifar10.toml"


def write_standin_cifar(raw_dir: Path, per_batch: int = 20, test: int = 40) -> None:
    """Random images in the official python-pickle batch format (see test_data.py)."""
    rng = np.random.default_rng(1)
    raw_dir.mkdir(parents=True)
    files = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    for name, n in files.items():
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        payload = pickle.dumps(batch, protocol=2).replace(
            b"numpy._core.multiarray", b"numpy.core.multiarray"
        )
        (raw_dir / name).write_bytes(payload)


# Lanczos at 5 steps (a tiny budget) warns that it has not converged; that is expected.
@pytest.mark.filterwarnings("ignore:Lanczos did not converge")
def test_the_cifar10_protocol_plans_and_trains_on_standin_data(tmp_path: Path) -> None:
    for number in ("16.5", "15.6", "14.7", "13.1", "12.4", "12.1"):  # the paper's seed table
        assert number in CIFAR.read_text()
    root = tmp_path / "data"
    write_standin_cifar(root / "cifar-10-batches-py")
    # The file as it is, but one value per method in the sweep, each fitting 4 steps.
    head, rest = CIFAR.read_text().split("\n[sweep]\n", 1)
    one_each = "".join(f'{m} = [["algorithm.lr=0.05"]]\n' for m in ("sgd", "rsgd", "esgd"))
    one_each += 'parle = [["algorithm.lr=0.25"]]\neasgd = [["scoping.gamma0=1.0"]]\n'
    one_each += 'diloco = [["algorithm.outer_lr=1.0"]]\nlocalsgd = [["algorithm.lr=0.05"]]\n'
    small = tmp_path / "compare_cifar10.toml"
    small.write_text(f"{head}\n[sweep]\n{one_each}\n[flatness]{rest.split('[flatness]', 1)[1]}")
    p = load_protocol(small)
    assert p.dataset == "cifar10" and p.models == ("smallconvnet", "resnet18")
    extra = [f"run.storage={tmp_path / 'runs'}", f"data.root={root}", "data.batch_size=4",
             "algorithm.coupling_period=2", "algorithm.inner_steps=2"]  # fmt: skip
    swept = sweep_jobs(p, {"smallconvnet": 4, "resnet18": 4}, extra)
    final = final_jobs(p, {"smallconvnet": 4, "resnet18": 4}, 1, untuned(p), extra)
    assert len(final) == 2 * len(TRAINED)
    for job in swept + final:  # the protocol's `set` reaches every run, each method's too
        assert job.config.data.dataset == "cifar10"
        assert job.config.algorithm.weight_decay == 0.0005
        assert job.config.data.validation == (p.validation if job.phase == "sweep" else 0.0)
    rsgd = next(j for j in final if (j.model, j.method) == ("smallconvnet", "rsgd"))
    flat = FlatnessSpec(subset=50, draws=4, lanczos_steps=5)
    done = run_job(to_toml(rsgd.config), "rsgd", "final", flat)
    run = Path(done["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    measured = json.loads((run / "compare.json").read_text())
    assert summary["gradient_evaluations_per_replica"] == 4 and summary["replicas"] == 4
    assert measured["lambda_max"] > 0 and len(measured["loss_delta"]) == len(flat.sigmas)
    assert run_job(to_toml(rsgd.config), "rsgd", "final", flat)["reused"]
