"""The run directory <storage>/<name>/: config, metrics, events, summary, plots, checkpoints.

It lives on any pyarrow filesystem (foundation/storage.py). Every file is replaced
whole, atomically where the filesystem allows, so a crash at any moment leaves the
previous complete file or the new one, never half of one.

Events are one object each, events/<ms since epoch>-<id>.json: object stores cannot
append, and a file rewritten whole from one process's memory would drop another
process's records. events.jsonl is a view rebuilt from that folder after each event,
for people and tools that read one file. metrics.parquet has a fixed, typed schema
(METRICS_SCHEMA; docs/run-directory.md), so the tables of two runs concatenate.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from foundation.storage import TMP_MARK, Storage, name_problem

EVENTS = "events"
EVENTS_VIEW = "events.jsonl"
METRICS = "metrics.parquet"
CENTER_FILE = "center.pt"
"""The final center: {"state_dict", "input_shape", "num_classes"} (torch.load with
weights_only=True), BatchNorm statistics recomputed as they were evaluated."""
# Everything a run writes here, and so everything --fresh may delete (nothing else).
WRITTEN_FILES = (METRICS, EVENTS_VIEW, "summary.json", "config.toml", CENTER_FILE)
WRITTEN_DIRS = ("checkpoints", "plots", EVENTS)
DAMAGED = "damaged"
"""Records found damaged (a truncated metrics.parquet, an events/*.json that does not
parse), moved here with a `record_set_aside` event; never deleted by Wide Valley."""

METRICS_SCHEMA = pa.schema([
    pa.field("round", pa.int64(), nullable=False),
    pa.field("replica", pa.int64(), nullable=False),
    pa.field("train_loss", pa.float64()),
    pa.field("distance_to_center", pa.float64()),
    pa.field("gamma", pa.float64(), nullable=False),
    pa.field("rho", pa.float64(), nullable=False),
    pa.field("lr", pa.float64(), nullable=False),
    pa.field("step_seconds", pa.float64()),
    pa.field("coupling_seconds", pa.float64()),
    pa.field("round_seconds", pa.float64(), nullable=False),
    pa.field("center_seconds", pa.float64(), nullable=False),
    pa.field("failure", pa.string()),
    *[pa.field(f"{where}test_{kind}", pa.float64()) for kind in ("loss", "accuracy", "metric")
      for where in ("", "center_", "ensemble_")],
])  # fmt: skip
"""One row per (round, replica); `round` counts 1…R like the progress lines, the
checkpoints and the summary; a failed replica's row has `failure` and no loss."""


def torch_bytes(value: Any) -> bytes:
    """torch.save of tensors and plain values, as bytes (any storage can hold them)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class RunDir:
    def __init__(self, storage: str, name: str) -> None:
        problem = name_problem(name)
        if problem is not None:  # the config refuses it first; this guards other callers
            raise ValueError(f"run name {name!r} {problem}")
        self.storage = Storage(storage).child(name)
        self.storage.mkdir("plots")
        self.aside: list[dict[str, str]] = []  # damaged records moved away (set_aside)

    @property
    def path(self) -> str:
        return str(self.storage)

    def exists(self, name: str) -> bool:
        return self.storage.exists(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.storage.write_bytes(name, data)

    def read_bytes(self, name: str) -> bytes:
        return self.storage.read_bytes(name)

    def write_text(self, name: str, text: str) -> None:
        self.storage.write_bytes(name, text.encode())

    def write_json(self, name: str, value: Any) -> None:
        self.write_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    # ---- events ---------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        """Record one event (start, resume, replica_restarted, divergence, …) as its own
        object, then rebuild the events.jsonl view."""
        self._adopt_old_view()
        now = time.time()
        record = {"time": now, "event": kind, **fields}
        name = f"{EVENTS}/{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}.json"
        self.write_text(name, json.dumps(record, sort_keys=True))
        lines = [json.dumps(e, sort_keys=True) for e in self.events(set_aside=True)]
        self.write_text(EVENTS_VIEW, "\n".join(lines) + "\n")

    def events(self, set_aside: bool = False) -> list[dict[str, Any]]:
        """Every event of every writer, oldest first; a damaged one is left out (and,
        when the run's writer asks, `set_aside`)."""
        store = self.storage.child(EVENTS)
        names = [n for n in store.list_files() if n.endswith(".json")]
        if not names:
            return self._old_view()
        records = []
        for name in names:
            record = _event_record(store.read_bytes(name))
            if record is None and set_aside:  # kept aside, so that the run can go on
                self.set_aside(f"{EVENTS}/{name}", "not a JSON event record")
            elif record is not None:
                records.append(record)
        return sorted(records, key=lambda e: float(e["time"]))

    def set_aside(self, name: str, why: str) -> None:
        """Move a damaged record to damaged/ (named in `aside`, for the run's events): one
        bad file must not block a run that has good checkpoints."""
        target = f"{DAMAGED}/{name.replace('/', '_')}.{int(time.time() * 1000)}"
        self.storage.mkdir(DAMAGED)
        self.storage.move(name, target)
        self.aside.append({"name": name, "moved_to": target, "reason": why})

    def _old_view(self) -> list[dict[str, Any]]:
        """events.jsonl of a run directory written before events/ existed."""
        if not self.exists(EVENTS_VIEW):
            return []
        text = self.read_bytes(EVENTS_VIEW).decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _adopt_old_view(self) -> None:
        """Before the first event object, an older events.jsonl becomes objects too."""
        if self.storage.child(EVENTS).list_files():
            return
        for i, record in enumerate(self._old_view()):
            name = f"{EVENTS}/{int(float(record['time']) * 1000):013d}-old{i:05d}.json"
            self.write_text(name, json.dumps(record, sort_keys=True))

    # ---- metrics --------------------------------------------------------------------

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        schema = METRICS_SCHEMA if name == METRICS else None
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        self.write_bytes(name, sink.getvalue().to_pybytes())

    def read_table(self, name: str) -> list[dict[str, Any]]:
        if not self.exists(name):
            return []
        rows: list[dict[str, Any]] = self.read_arrow(name).to_pylist()
        return rows

    def read_arrow(self, name: str) -> pa.Table:
        # ParquetFile: pq.read_table would import pandas (foundation/data/cache.py).
        with pq.ParquetFile(pa.BufferReader(self.read_bytes(name))) as table:
            return table.read()

    # ---- starting over, cleaning up ---------------------------------------------------

    def clear(self) -> None:
        """Start over (--fresh): remove what a run writes here, and nothing else."""
        for name in WRITTEN_DIRS:
            self.storage.delete_dir(name)
        for name in WRITTEN_FILES:
            self.storage.delete_file(name)
        self.storage.mkdir("plots")

    def remove_leftovers(self) -> list[str]:
        """Temporary files of writes that never finished (a full disk, a killed process);
        returns their names. Only the lease holder calls this."""
        gone = []
        for folder in ("", "plots", EVENTS, "checkpoints"):
            store = self.storage.child(folder) if folder else self.storage
            for name in store.list_files():
                if TMP_MARK in name:
                    store.delete_file(name)
                    gone.append(f"{folder}/{name}".lstrip("/"))
        checkpoints = self.storage.child("checkpoints")
        for name in checkpoints.list_dirs():  # a checkpoint folder staged, never renamed
            if name.startswith(TMP_MARK):
                checkpoints.delete_dir(name)
                gone.append(f"checkpoints/{name}")
        return gone


def _event_record(data: bytes) -> dict[str, Any] | None:
    """One events/*.json as a record, or None when it is not one."""
    try:
        record = json.loads(data)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    return record if isinstance(record.get("time"), int | float) else None
