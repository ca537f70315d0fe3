"""P3: one coupling round for two replicas of an 11M-parameter model (ResNet-18 size).

What is timed is the transport alone, with real Ray actors and real sizes: each replica
returns its weights, the coordinator forms the center, puts it once, and each replica
pulls toward it. Side by side, the same exchange done naively: every tensor of the
model's state_dict pickled through the object store (what a per-tensor implementation
does). Reported: both times (ms, CPU) and their ratio.

Target: ≤ 60 ms on the 2-core CPU box (≤ 5 ms on a GPU).

    python benchmarks/p3_coupling_round.py [--arch resnet18] [--replicas 2]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import ray
import torch
from _timing import alternate, header, median_ratio, report_pairs, seconds

from flatmath import coupling
from flatmath.flat import FlatModule, readonly_tensor
from foundation.models import build_model


class FlatHolder:
    """A replica's weights as Wide Valley keeps them: one contiguous float32 vector."""

    def __init__(self, arch: str) -> None:
        torch.set_num_threads(1)
        self.flat = FlatModule(build_model(arch, (3, 32, 32), 10))

    def exchange(self, center: np.ndarray | None) -> np.ndarray:
        if center is not None:
            p = self.flat.num_params
            coupling.rsgd_pull_(self.flat.params, readonly_tensor(center)[:p], 0.1, 10, 0.1)
        return self.flat.flat.numpy()


class DictHolder:
    """The naive way: a state_dict of torch tensors, pickled tensor by tensor."""

    def __init__(self, arch: str) -> None:
        torch.set_num_threads(1)
        self.model = build_model(arch, (3, 32, 32), 10)

    def exchange(self, center: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if center is not None:
            with torch.no_grad():
                for name, value in self.model.state_dict().items():
                    if value.is_floating_point():
                        value.sub_(0.1 * 10 * 0.1 * (value - center[name]))
        return {k: v.clone() for k, v in self.model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement")
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    header("P3 one coupling round: flat buffers vs per-tensor pickling", vars(args))
    ray.init(num_cpus=2 * args.replicas, include_dashboard=False, log_to_driver=False)
    flat_cls: Any = ray.remote(num_cpus=1)(FlatHolder)
    dict_cls: Any = ray.remote(num_cpus=1)(DictHolder)
    flat_actors = [flat_cls.remote(args.arch) for _ in range(args.replicas)]
    dict_actors = [dict_cls.remote(args.arch) for _ in range(args.replicas)]
    state: dict[str, Any] = {"flat": None, "dict": None}
    size = int(ray.get(flat_actors[0].exchange.remote(None)).size)
    print(f"  parameters + float buffers per replica: {size:,} floats ({size * 4 / 1e6:.1f} MB)")

    def flat_round() -> None:
        ref = ray.put(state["flat"]) if state["flat"] is not None else None
        weights = ray.get([a.exchange.remote(ref) for a in flat_actors])
        state["flat"] = coupling.center([readonly_tensor(w) for w in weights]).numpy()

    def dict_round() -> None:
        ref = ray.put(state["dict"]) if state["dict"] is not None else None
        dicts = ray.get([a.exchange.remote(ref) for a in dict_actors])
        state["dict"] = {k: torch.stack([d[k].float() for d in dicts]).mean(0) for k in dicts[0]}

    def per_round(fn: Any) -> Any:
        return lambda: seconds(lambda: [fn() for _ in range(args.rounds)]) / args.rounds * 1000

    for warm_up in (flat_round, dict_round, flat_round, dict_round):  # first puts and gets
        warm_up()
    pairs = alternate(per_round(flat_round), per_round(dict_round), args.pairs)
    report_pairs("flat buffer", "per-tensor", pairs, "ms")
    flat_ms = sorted(x for x, _ in pairs)[len(pairs) // 2]
    print(f"P3 = {flat_ms:.1f} ms per round (median; target <= 60 ms on the 2-core CPU box), "
          f"{1 / median_ratio(pairs):.2f}x faster than per-tensor pickling")  # fmt: skip


if __name__ == "__main__":
    main()
