"""Weights & Biases for runs and sweep trials (logging.wandb = true), offline-safe.

Without an API key (WANDB_API_KEY, or the `wandb login` entry in ~/.netrc) W&B runs
offline: it writes <dir>/wandb/offline-run-*/ and nothing else — no prompt, no network
(its error reporting is off too); `wandb sync <dir>/wandb/offline-run-*` uploads such
runs later. With a key it logs online. Tracking never stops training: when W&B cannot
start, one line says so and the run goes on without it. wandb is imported only here,
and only when asked for.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import sys
from typing import Any
from urllib.parse import urlparse

from foundation.config import Config, to_dict

DEFAULT_BASE_URL = "https://api.wandb.ai"
INIT_TIMEOUT_S = 60.0


def has_api_key() -> bool:
    """A key in WANDB_API_KEY or in the netrc entry for W&B's host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname or ""
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def prepare() -> str:
    """Choose the mode (online only with a key) and set the environment that keeps W&B
    from prompting or reaching out when offline; returns "online", "offline" or "disabled"."""
    asked = os.environ.get("WANDB_MODE", "")
    mode = asked if asked in ("offline", "disabled") else "online" if has_api_key() else "offline"
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_SILENT"] = "true"  # our progress lines stay the only output
    if mode != "online":
        # Error reporting and telemetry are the only network calls an offline run would make.
        os.environ["WANDB_ERROR_REPORTING"] = "false"
    return mode


SHIPPED = ("WANDB_MODE", "WANDB_SILENT", "WANDB_ERROR_REPORTING", "WANDB_API_KEY",
           "WANDB_BASE_URL", "WANDB_ENTITY")  # fmt: skip


def environment() -> dict[str, str]:
    """The W&B settings a driver hands to processes it starts elsewhere (sweep trials):
    its mode decision first of all, so that a trial never goes online on its own."""
    prepare()
    return {key: os.environ[key] for key in SHIPPED if key in os.environ}


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a progress or summary dict (a list of numbers → its mean)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            out[f"{key}_mean"] = float(sum(value) / len(value))
    return out


class Tracker:
    """One W&B run, or nothing (`run` is None) when tracking is off or failed to start."""

    def __init__(self, run: Any = None) -> None:
        self.run = run

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, progress: dict[str, Any]) -> None:
        """One progress dict of Coordinator.step (its numbers, at its round)."""
        if self.run is None:
            return
        values = numbers(progress)
        values["failed_replicas"] = float(len(progress.get("failed", [])))
        step = progress.get("round")
        self._call(lambda: self.run.log(values, step=int(step) if step is not None else None))

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        if summary:
            texts = {k: v for k, v in summary.items() if isinstance(v, str)}
            self._call(lambda: self.run.summary.update({**numbers(summary), **texts}))
        self._call(self.run.finish)
        self.run = None

    def _call(self, fn: Any) -> None:
        try:
            fn()
        except Exception as err:  # W&B trouble must never end a training run
            print(f"wv: W&B logging stopped: {type(err).__name__}: {err}", file=sys.stderr)
            self.run = None


def local_dir(run_path: str) -> str:
    """Where W&B writes its files: the run directory when it is local, else the cwd."""
    return os.path.abspath(run_path) if "://" not in run_path else os.getcwd()


def run_id(key: str) -> str:
    """A stable W&B run id for one run directory, so a resumed run continues its W&B run."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def start(
    config: Config,
    run_path: str,
    *,
    group: str | None = None,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Tracker:
    """A Tracker for this run: a live W&B run if logging.wandb is on, else a no-op."""
    if not config.logging.wandb:
        return Tracker()
    mode = prepare()
    if mode == "disabled":
        return Tracker()
    where = local_dir(run_path)
    try:
        import wandb

        run = wandb.init(
            project=config.logging.wandb_project,
            group=group,
            name=name or config.run.name,
            id=run_id(run_path),
            resume="allow",
            dir=where,
            mode=mode,  # type: ignore[arg-type]
            config={**to_dict(config), **(extra or {})},
            reinit="create_new",
            settings=wandb.Settings(
                silent=True, console="off", init_timeout=INIT_TIMEOUT_S, x_disable_stats=True
            ),
        )
    except Exception as err:  # no W&B is better than no run
        print(f"wv: W&B is off for this run: {type(err).__name__}: {err}", file=sys.stderr)
        return Tracker()
    detail = f"files in {where}/wandb" if mode == "offline" else "online"
    print(f"wv: W&B {mode} ({detail}), project {config.logging.wandb_project}", flush=True)
    return Tracker(run)
