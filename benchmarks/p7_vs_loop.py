"""P7: the embedded default against the hand-written loop it replaces, whole processes.

The loop is what the reference codes do on one machine: one Python process steps the y
replicas one after another and pulls them toward their mean every K steps (plain
PyTorch, below: the same model and initial weights per replica, the same data, learning
rate, momentum, K, rounds and γ schedule, automatic γ1 included). Against it:
`python -m jobs.train` with the same config (its own local Ray, actors, the round loop,
evaluation and the run directory). Both are timed as whole processes from launch to
exit, in alternation (loop, train, loop, train, …), and P7 is the median of the per-pair
ratios train ÷ loop. The loop runs at its best thread count: every pair runs it at 1 and
at 2 threads (in alternating order) and counts the faster, which favours the loop (the
faster of two noisy runs).

    python benchmarks/p7_vs_loop.py [--pairs 5] [--set model.arch=cnn1d]
    WV_DASHBOARD=0 python benchmarks/p7_vs_loop.py       # the private Ray without a dashboard
    python benchmarks/p7_vs_loop.py --loop --threads 1      # the loop alone, once
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "default.toml"


def hand_loop(sets: list[str], threads: int) -> float:
    """The 40-line loop; returns the center's test accuracy."""
    import torch
    import torch.nn.functional as F

    from coordinator.snapshot import scopes
    from foundation.config import load_config
    from foundation.parts import Parts
    from replicas.replica import replica_seed

    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, sets)
    parts = Parts.from_config(cfg)
    data = parts.load_data(cfg)
    a, y, n = cfg.algorithm, cfg.algorithm.replicas, len(data.train.y)
    seeds = [replica_seed(cfg.run.seed, i) for i in range(y)]
    models = [parts.new_model(data, s) for s in seeds]
    opts = [torch.optim.SGD(m.parameters(), lr=a.lr, momentum=a.momentum) for m in models]
    orders = [torch.Generator().manual_seed(s) for s in seeds]
    perms, spots = [torch.randperm(n, generator=g) for g in orders], [0] * y
    gamma, _ = scopes(cfg)
    center: list[torch.Tensor] | None = None
    for r in range(cfg.train.rounds):
        losses = []
        for i, (model, opt) in enumerate(zip(models, opts, strict=True)):
            if center is not None:  # rSGD's pull: w ← w − η K γ (w − w̄)
                with torch.no_grad():
                    for w, c in zip(model.parameters(), center, strict=True):
                        w.sub_(a.lr * a.coupling_period * gamma.value() * (w - c))
            for _ in range(a.coupling_period):
                if spots[i] + cfg.data.batch_size > n:
                    perms[i], spots[i] = torch.randperm(n, generator=orders[i]), 0
                batch = perms[i][spots[i] : spots[i] + cfg.data.batch_size]
                spots[i] += cfg.data.batch_size
                loss = F.cross_entropy(model(data.train.x[batch]), data.train.y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            weights = [list(m.parameters()) for m in models]
            center = [torch.stack(ws).mean(0) for ws in zip(*weights, strict=True)]
            if r == 0:  # the automatic γ1 is fixed from the first round, as in the service
                sq = [sum(float((w - c).pow(2).sum()) for w, c in zip(ws, center, strict=True))
                      for ws in weights]  # fmt: skip
                gamma.calibrate(statistics.mean(losses), statistics.mean(sq) / 2)
        gamma.step()
    return _center_accuracy(models[0], center, data)


def _center_accuracy(net: Any, center: list[Any] | None, data: Any) -> float:
    import torch

    assert center is not None
    with torch.no_grad():
        for w, c in zip(net.parameters(), center, strict=True):
            w.copy_(c)
        net.train()
        for module in net.modules():  # BatchNorm statistics of the center, on train data
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        for start in range(0, len(data.train.y), 500):
            net(data.train.x[start : start + 500])
        net.eval()
        return float((net(data.test.x).argmax(1) == data.test.y).float().mean())


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str, list[float]]:
    """Seconds from launch to exit, the output, and when each progress line ("round …")
    arrived: the train command's start-up, rounds and finish-and-exit are read off it."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    lines, rounds_at = [], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("round "):
            rounds_at.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(lines)}")
    return seconds, "".join(lines), rounds_at


def accuracy_of(output: str, loop: bool) -> float:
    if loop:
        return float(output.split("center test accuracy ")[1].split()[0])
    line = next(x for x in output.splitlines() if x.startswith("center "))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], dest="sets")
    parser.add_argument("--loop", action="store_true", help="run the hand loop once")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.loop:
        print(f"center test accuracy {hand_loop(args.sets, args.threads):.4f}")
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _timing import header

    settings = {"config": "jobs/configs/default.toml", "sets": args.sets, "pairs": args.pairs,
                "WV_DASHBOARD": os.environ.get("WV_DASHBOARD", "1 (unset)")}  # fmt: skip
    header("P7: python -m jobs.train ÷ the hand-written loop (whole processes)", settings)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sets = [a for s in args.sets for a in ("--set", s)]
    loop_cmd = [sys.executable, "benchmarks/p7_vs_loop.py", "--loop", *sets]
    with tempfile.TemporaryDirectory(prefix="p7") as storage:
        train_cmd = [sys.executable, "-m", "jobs.train", "--config", str(CONFIG), *sets,
                     "--set", f"run.storage={storage}", "--fresh"]  # fmt: skip
        timed(train_cmd, env)  # the data cache and the first imports, not counted
        pairs, phases = [], []
        for k in range(args.pairs):
            # The loop at its best: both thread counts in every pair, the faster counts.
            order = (1, 2) if k % 2 == 0 else (2, 1)
            loops = {t: timed([*loop_cmd, "--threads", str(t)], env) for t in order}
            best = min(loops, key=lambda t: loops[t][0])
            loop_s, loop_out, _ = loops[best]
            train_s, train_out, rounds_at = timed(train_cmd, env)
            pairs.append((train_s, loop_s))
            # start-up (to the first round's line), the rounds, the finish and the exit
            phases.append((rounds_at[0], rounds_at[-1] - rounds_at[0], train_s - rounds_at[-1]))
            train_acc, loop_acc = accuracy_of(train_out, False), accuracy_of(loop_out, True)
            print(f"  pair {k + 1}: train {train_s:6.1f} s (center acc {train_acc:.3f}; "
                  f"start-up {phases[-1][0]:.1f} s, rounds {phases[-1][1]:.1f} s, finish and "
                  f"exit {phases[-1][2]:.1f} s)  loop {loops[1][0]:.1f} s at 1 thread, "
                  f"{loops[2][0]:.1f} s at 2 (center acc {loop_acc:.3f})  "
                  f"ratio {train_s / loop_s:.2f}", flush=True)  # fmt: skip
    ratios = [t / lp for t, lp in pairs]
    train_med = statistics.median(t for t, _ in pairs)
    loop_med = statistics.median(lp for _, lp in pairs)
    start_up, rounds, finish = (statistics.median(p[i] for p in phases) for i in range(3))
    print(
        f"P7 = {statistics.median(ratios):.2f} (median of {len(pairs)} pairs; "
        f"{min(ratios):.2f}–{max(ratios):.2f}); train {train_med:.1f} s, loop {loop_med:.1f} s"
    )
    print(f"  train, medians: start-up {start_up:.1f} s, rounds {rounds:.1f} s, finish and "
          f"exit {finish:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
