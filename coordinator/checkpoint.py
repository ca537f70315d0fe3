"""Checkpoints: everything a run needs to go on exactly where it stopped.

checkpoints/round-NNNNNN/ holds state.pt (torch.save of tensors and plain values only,
read back with torch.load(weights_only=True): never arbitrary pickle) and
manifest.json (the round and state.pt's sha256), written LAST: a checkpoint without a
manifest, or whose bytes do not match it, does not exist. On a local disk the whole
folder is also written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import torch

from coordinator.rundir import RunDir
from foundation.errors import WideValleyError

FOLDER = "checkpoints"
PATTERN = re.compile(r"^round-(\d{6,})$")
FORMAT = 1


class CorruptCheckpoint(WideValleyError, ValueError):
    pass


def folder_name(round_: int) -> str:
    """checkpoints/round-NNNNNN: the folder of the checkpoint taken after `round_` rounds."""
    return f"round-{round_:06d}"


def save(run: RunDir, round_: int, state: dict[str, Any], keep: int = 3) -> str:
    """Write the checkpoint of `round_` (rounds completed) and prune all but `keep`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    manifest = {"format": FORMAT, "round": round_, "sha256": hashlib.sha256(payload).hexdigest()}
    store = run.storage.child(FOLDER)
    final = folder_name(round_)
    staging = f".tmp-{final}-{uuid.uuid4().hex[:8]}" if store.is_local else final
    store.mkdir(staging)
    store.write_bytes(f"{staging}/state.pt", payload)
    store.write_bytes(f"{staging}/manifest.json", json.dumps(manifest).encode())
    if staging != final:
        store.delete_dir(final)
        store.move(staging, final)
    for old in rounds(run)[:-keep] if keep > 0 else []:
        store.delete_dir(folder_name(old))
    return f"{store}/{final}"


def rounds(run: RunDir) -> list[int]:
    """Rounds of the checkpoint folders present (complete or not), oldest first."""
    names = run.storage.child(FOLDER).list_dirs()
    return sorted(int(m.group(1)) for n in names if (m := PATTERN.match(n)))


def verified(run: RunDir, round_: int) -> bool:
    """Whether the checkpoint of `round_` exists whole: its manifest describes it and
    state.pt has the manifest's sha256 (a killed writer or a damaged disk leaves less)."""
    try:
        _verified_payload(run, round_)
    except CorruptCheckpoint:
        return False
    return True


def _verified_payload(run: RunDir, round_: int) -> bytes:
    store = run.storage.child(FOLDER, folder_name(round_))
    try:
        manifest = json.loads(store.read_bytes("manifest.json"))
        payload = store.read_bytes("state.pt")
    except (OSError, ValueError) as err:
        raise CorruptCheckpoint(f"unreadable ({str(err).splitlines()[0]})") from None
    if manifest.get("format") != FORMAT or manifest.get("round") != round_:
        raise CorruptCheckpoint(f"manifest does not describe round {round_}: {manifest}")
    if hashlib.sha256(payload).hexdigest() != manifest.get("sha256"):
        raise CorruptCheckpoint("state.pt does not match the sha256 in its manifest")
    return payload


def load(run: RunDir, round_: int) -> dict[str, Any]:
    payload = _verified_payload(run, round_)
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as err:  # torch raises several types for a bad archive
        raise CorruptCheckpoint(f"state.pt does not load ({err})") from None
    return state


def load_latest(
    run: RunDir, on_corrupt: Callable[[int, str], None] | None = None
) -> tuple[int, dict[str, Any]] | None:
    """The newest checkpoint that verifies; corrupt ones are reported and skipped."""
    for round_ in reversed(rounds(run)):
        try:
            return round_, load(run, round_)
        except CorruptCheckpoint as err:
            if on_corrupt is not None:
                on_corrupt(round_, str(err))
    return None
