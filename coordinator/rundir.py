"""The run directory <storage>/<name>/: config, metrics, events, summary, plots.

Every file is written under a temporary name and renamed into place, so a crash at any
moment leaves either the previous complete file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunDir:
    def __init__(self, storage: str | os.PathLike[str], name: str) -> None:
        self.path = Path(storage) / name
        try:
            (self.path / "plots").mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create the run directory {self.path}: {err.strerror}") from None

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        _atomic_write(target, text.encode())
        return target

    def write_json(self, name: str, value: Any) -> Path:
        return self.write_text(name, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def event(self, kind: str, **fields: Any) -> None:
        """Append one line to events.jsonl (failures, restarts, resumes, start, finish)."""
        line = json.dumps({"time": time.time(), "event": kind, **fields}, sort_keys=True)
        with (self.path / "events.jsonl").open("a") as f:
            f.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        path = self.path / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> Path:
        target = self.path / name
        tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, target)
        return target
