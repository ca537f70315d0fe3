"""One writer per run directory: the lease in <run>/lease.json.

Two runs writing one run directory at once resume from each other's half-written
checkpoints and overwrite each other's metrics. So the Coordinator holds a lease on its
run directory from before it writes anything until the run ends, and a second run on the
same directory fails at once, naming the holder.

- On a local (or NFS) disk the lease is an exclusive `flock` on lease.json, held by the
  Coordinator's process: the kernel releases it when that process ends, however it ends
  (SIGKILL included), so a resubmitted run never waits for a dead one.
- Object stores (s3://, gs://) have no lock and no conditional create through pyarrow,
  so there the lease is best effort: lease.json names its owner and is renewed every
  HEARTBEAT_S seconds; a lease not renewed for STALE_AFTER_S seconds is taken over.
  Taking it is write-then-read-back after SETTLE_S, so of two runs that start at the
  same moment one sees the other's record and stops. A holder that finds its lease
  taken over (it was paused longer than STALE_AFTER_S) stops before it writes again.
  A run whose driver was SIGKILLed leaves its lease behind: a rerun then waits until
  the lease is stale, or fails naming it (`wv: error: … held by …`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from typing import IO, Any

from foundation.errors import WideValleyError
from foundation.storage import Storage

LEASE_FILE = "lease.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
SETTLE_S = 1.0


class LeaseHeld(WideValleyError, RuntimeError):
    """The run directory is being written by another run (bad input: exit status 2)."""


class LeaseLost(WideValleyError, RuntimeError):
    """Another run took this run's lease over (this one was paused past STALE_AFTER_S)."""


def describe(record: dict[str, Any]) -> str:
    """Who holds a lease, in words: the job, the process and host, the last renewal."""
    job = f"job {record['job']}, " if record.get("job") else ""
    age = time.time() - float(record.get("renewed", 0.0))
    return f"{job}pid {record.get('pid')} on {record.get('host')}, renewed {age:.0f} s ago"


class Lease:
    def __init__(self, run: Storage, job: str = "") -> None:
        self.run = run
        self.record: dict[str, Any] = {
            "owner": uuid.uuid4().hex, "job": job or os.environ.get("RAY_JOB_ID", ""),
            "host": socket.gethostname(), "pid": os.getpid(), "acquired": time.time(),
        }  # fmt: skip
        self._file: IO[bytes] | None = None
        self._renewed = 0.0

    # ---- local disks: flock -------------------------------------------------------

    def _lock_local(self) -> None:
        path = self.run.path(LEASE_FILE)
        handle = open(path, "a+b")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read())
            handle.close()
            raise LeaseHeld(f"{self.run.shown()} is being written by {describe(holder)}") from None
        self._file = handle
        self._write_local()

    def _write_local(self) -> None:
        assert self._file is not None
        self.record["renewed"] = time.time()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(self.record).encode())
        self._file.flush()

    # ---- object stores: a record with a heartbeat -----------------------------------

    def _current(self) -> dict[str, Any] | None:
        if not self.run.exists(LEASE_FILE):
            return None
        record = _parse(self.run.read_bytes(LEASE_FILE))
        return None if record.get("released") else record

    def _claim_remote(self) -> None:
        current = self._current()
        if current is not None and not _stale(current) and current["owner"] != self.record["owner"]:
            raise LeaseHeld(f"{self.run.shown()} is being written by {describe(current)}")
        self._write_remote()
        time.sleep(SETTLE_S)  # a run that wrote at the same moment has written by now
        current = self._current()
        if current is None or current.get("owner") != self.record["owner"]:
            winner = describe(current) if current else "another run"
            raise LeaseHeld(f"{self.run.shown()} is being written by {winner}")

    def _write_remote(self) -> None:
        self.record["renewed"] = time.time()
        self.run.write_bytes(LEASE_FILE, json.dumps(self.record).encode())

    # ---- the lease's life -----------------------------------------------------------

    def acquire(self) -> Lease:
        """Hold the lease, or raise LeaseHeld naming the run that holds it."""
        self.run.mkdir()
        if self.run.is_local:
            self._lock_local()
        else:
            self._claim_remote()
        self._renewed = time.monotonic()
        return self

    def renew(self) -> None:
        """Called every round: a heartbeat every HEARTBEAT_S on object stores, and the
        check that nobody took the lease over before this run writes again."""
        if self.run.is_local or time.monotonic() - self._renewed < HEARTBEAT_S:
            return
        current = self._current()
        if current is None or current.get("owner") != self.record["owner"]:
            holder = describe(current) if current else "nobody (it was removed)"
            raise LeaseLost(f"this run lost its lease on {self.run.shown()} to {holder}")
        self._write_remote()
        self._renewed = time.monotonic()

    def release(self) -> None:
        """Let the next run in (idempotent; best effort when storage fails)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif not self.run.is_local and self._renewed:
            with contextlib.suppress(OSError):
                current = self._current()
                if current is not None and current.get("owner") == self.record["owner"]:
                    released = {**self.record, "released": True}
                    self.run.write_bytes(LEASE_FILE, json.dumps(released).encode())
            self._renewed = 0.0


def check_run_directory(storage: str, name: str) -> Storage:
    """The run directory <storage>/<name> (not created), once its storage is known to be
    writable and no run holds it (LeaseHeld); the driver's first checks, which
    `python -m jobs.train` also makes before it starts Ray early (jobs/train.py)."""
    Storage(storage).check_writable()
    run = Storage(storage).child(name)
    check_free(run)
    return run


def check_free(run: Storage) -> None:
    """Raise LeaseHeld if a run holds `run` now (what the driver checks before it starts
    any actor; the Coordinator then takes the lease itself). Writes nothing."""
    if not run.exists(LEASE_FILE):
        return
    if run.is_local:
        Lease(run).acquire().release()  # a free flock is taken and given back at once
        return
    current = Lease(run)._current()
    if current is not None and not _stale(current):
        raise LeaseHeld(f"{run.shown()} is being written by {describe(current)}")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _stale(record: dict[str, Any]) -> bool:
    return time.time() - float(record.get("renewed", 0.0)) > STALE_AFTER_S
