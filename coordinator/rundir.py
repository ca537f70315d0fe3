"""The run directory <storage>/<name>/: config, metrics, events, summary, plots, checkpoints.

It lives on any pyarrow filesystem (foundation/storage.py). Every file is replaced
whole, atomically where the filesystem allows, so a crash at any moment leaves the
previous complete file or the new one, never half of one. events.jsonl is rewritten
whole rather than appended because object stores cannot append (events are few).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from foundation.storage import Storage


class RunDir:
    def __init__(self, storage: str, name: str) -> None:
        self.storage = Storage(storage).child(name)
        try:
            self.storage.mkdir("plots")
        except OSError as err:
            raise OSError(f"cannot create the run directory {self.storage}: {err}") from None
        self._events = self._read_events()

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

    def _read_events(self) -> list[dict[str, Any]]:
        if not self.exists("events.jsonl"):
            return []
        text = self.read_bytes("events.jsonl").decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def event(self, kind: str, **fields: Any) -> None:
        """Record one event (start, resume, replica_replaced, divergence, …)."""
        self._events.append({"time": time.time(), "event": kind, **fields})
        lines = [json.dumps(e, sort_keys=True) for e in self._events]
        self.write_text("events.jsonl", "\n".join(lines) + "\n")

    def events(self) -> list[dict[str, Any]]:
        return list(self._events)

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        self.write_bytes(name, sink.getvalue().to_pybytes())

    def read_table(self, name: str) -> list[dict[str, Any]]:
        if not self.exists(name):
            return []
        rows: list[dict[str, Any]] = pq.read_table(
            pa.BufferReader(self.read_bytes(name))
        ).to_pylist()
        return rows

    def clear(self) -> None:
        """Start over (--fresh): remove everything a previous run wrote here."""
        for name in ("checkpoints", "plots"):
            self.storage.delete_dir(name)
        for name in ("metrics.parquet", "events.jsonl", "summary.json", "config.toml"):
            if self.exists(name):
                self.storage.fs.delete_file(self.storage.path(name))
        self.storage.mkdir("plots")
        self._events = []
