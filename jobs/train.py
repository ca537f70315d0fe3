"""`python -m jobs.train [--config PATH] [--set section.key=value ...]`: one coupled run.

Attaches to RAY_ADDRESS's cluster (as under `ray job submit`) or starts a local Ray,
starts the Coordinator actor (which starts the replica actors), prints one line per
round and a summary table, and leaves everything in <run.storage>/<run.name>/.
Running the same command again resumes from the run's last good checkpoint (--fresh
starts over). Bad input fails before any actor starts, with one line and exit status
2; a run that fails while training exits with 1, its metrics and events kept.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from typing import Any

import ray

from cluster.actors import RayReplicaGroup, ResourceError, replica_resources
from cluster.session import connect
from coordinator import checkpoint
from coordinator.coordinator import Coordinator, ResumeMismatch, check_same_run
from coordinator.rundir import RunDir
from foundation.config import Config, ConfigError, load_config, to_dict
from foundation.data import DatasetError, load_dataset
from foundation.storage import Storage
from jobs import CONFIG_DIR

DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config (TOML)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set algorithm.replicas=8 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true",
        help="start over: delete this run's checkpoints, metrics and events instead of resuming",
    )  # fmt: skip
    return parser.parse_args(argv)


def check_inputs(config: Config, fresh: bool) -> None:
    """Everything that can be checked before any actor starts."""
    Storage(config.run.storage).check_writable()
    run = RunDir(config.run.storage, config.run.name)
    if not fresh and checkpoint.rounds(run) and run.exists("config.toml"):
        saved = tomllib.loads(run.read_bytes("config.toml").decode())
        check_same_run(saved, to_dict(config), run.path)
    # Builds the Parquet cache once here, so the replicas only read it.
    data = load_dataset(config.data.dataset, config.data.root)
    if config.data.batch_size > len(data.train.y):
        raise ConfigError(
            f"data.batch_size = {config.data.batch_size} exceeds the {len(data.train.y)} "
            f"training examples of {config.data.dataset}"
        )


def progress_line(p: dict[str, Any], rounds: int) -> str:
    line = (
        f"round {p['round']:>5}/{rounds}  γ {p['gamma']:.4g}  loss {p['mean_loss']:.4f}  "
        f"dist {p['mean_distance']:.4g}  {p['seconds'] * 1000:.0f} ms"
    )
    if "center_test_accuracy" in p:
        line += f"  center test acc {p['center_test_accuracy']:.4f}"
    if p.get("failed"):
        line += f"  replicas {p['failed']} failed and restarted from the center"
    if p.get("checkpoint"):
        line += "  · checkpoint"
    return line


def summary_table(s: dict[str, Any], run_dir: str) -> str:
    rows = [("center", s["center_test_accuracy"], s["center_train_accuracy"])]
    rows.append(("ensemble (outputs averaged)", s["ensemble_test_accuracy"], None))
    for a, (test, train) in enumerate(
        zip(s["replica_test_accuracy"], s["replica_train_accuracy"], strict=True)
    ):
        rows.append((f"replica {a}", test, train))
    mean = sum(s["replica_test_accuracy"]) / len(s["replica_test_accuracy"])
    rows.append(("replica mean", mean, None))
    lines = [f"{'model':<28} {'test acc':>9} {'train acc':>10}"]
    for name, test, train in rows:
        lines.append(f"{name:<28} {test:>9.4f} {'' if train is None else f'{train:.4f}':>10}")
    lines.append(
        f"{s['algorithm']} · {s['replicas']} replicas · {s['rounds']} rounds · "
        f"{s['gradient_evaluations_per_replica']} gradient evaluations per replica · "
        f"{s['wall_seconds']:.1f} s"
    )
    lines.append(f"center_sha256 {s['center_sha256']}")
    lines.append(f"run directory {run_dir}")
    return "\n".join(lines)


def run(config: Config, fresh: bool = False) -> dict[str, Any]:
    from foundation import tracking  # wandb is imported only when logging.wandb is on

    where = connect()
    replica_resources(config, ray.cluster_resources())  # fail before any actor starts
    print(
        f"wv: {config.algorithm.kind} with {config.algorithm.replicas} replicas of "
        f"{config.model.arch} on {config.data.dataset}, {config.train.rounds} rounds of "
        f"K={config.algorithm.coupling_period}, on {where}",
        flush=True,
    )
    coordinator: Any = ray.remote(num_cpus=0)(Coordinator).remote(
        config, RayReplicaGroup, fresh=fresh
    )
    tracker = tracking.start(config, RunDir(config.run.storage, config.run.name).path)
    try:
        status = ray.get(coordinator.status.remote())
        if status["resumed_from"] is not None:
            print(f"wv: resuming from the checkpoint at round {status['resumed_from']}", flush=True)
        at = status["round"]
        while at < config.train.rounds:
            progress = ray.get(coordinator.step.remote())
            print(progress_line(progress, config.train.rounds), flush=True)
            tracker.log(progress)
            at = progress["round"]
        summary: dict[str, Any] = ray.get(coordinator.finish.remote())
        tracker.finish(summary)
        ray.get(coordinator.shutdown.remote())
    finally:
        tracker.finish()
        ray.kill(coordinator)
    return summary


def one_line(err: ray.exceptions.RayError) -> str:
    """The error a Ray actor raised, as one line (not Ray's wrapped traceback)."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        check_inputs(config, args.fresh)
        summary = run(config, fresh=args.fresh)
    except (ConfigError, DatasetError, ResourceError, ResumeMismatch, OSError) as err:
        print(f"wv: error: {err}", file=sys.stderr)
        return 2
    except ray.exceptions.RayError as err:
        print(f"wv: error: {one_line(err)}", file=sys.stderr)
        return 1
    print(summary_table(summary, RunDir(config.run.storage, config.run.name).path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
