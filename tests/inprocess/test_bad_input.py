"""Every row of docs/reliability.md's bad-input table, run through the real CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # each row runs `python -m jobs.train` in a subprocess
REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"


def table_rows() -> list[tuple[str, str, str]]:
    text = DOC.read_text()
    block = text.split("<!-- bad-inputs -->")[1].split("<!-- /bad-inputs -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:  # skip the header and the rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        what, args, message = cells[0], cells[1].strip("`"), cells[2].strip("`")
        rows.append((what, args, message))
    return rows


ROWS = table_rows()


def test_the_table_has_every_kind_of_bad_input() -> None:
    assert len(ROWS) >= 12
    joined = " ".join(what for what, _, _ in ROWS)
    for needed in ("out of range", "unknown key", "dataset", "architecture", "algorithm",
                   "data path", "GPUs", "run.storage"):  # fmt: skip
        assert needed in joined, needed


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, built_data_root: Path
) -> list[dict[str, Any]]:
    """Every row through jobs.train.main, all in one subprocess (the imports once)."""
    base = tmp_path_factory.mktemp("bad")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(base)}  # no RAY_ADDRESS: never a shared cluster
    # The rows that get as far as loading MNIST-1D read the session's cache (the runner
    # gives each row a data.root of its own, and a later --set wins) instead of each
    # generating it. A row whose message names its own folder keeps that folder.
    shared = f" --set data.root={built_data_root}"
    rows = [args if "$TMP" in message else args + shared for _, args, message in ROWS]
    done = subprocess.run(
        [sys.executable, "-m", "tests.inprocess.bad_input_runner", str(base), json.dumps(rows)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(lines) == len(ROWS), done.stdout + done.stderr
    return [{**json.loads(line), "tmp": str(base / f"row{i}")} for i, line in enumerate(lines)]


@pytest.mark.parametrize("row", range(len(ROWS)), ids=[r[0] for r in ROWS])
def test_bad_input_fails_with_its_one_line(row: int, outcomes: list[dict[str, Any]]) -> None:
    _, _, message = ROWS[row]
    done = outcomes[row]
    assert done["code"] == 2, done
    assert done["stderr"].strip() == message.replace("$TMP", done["tmp"]), done["stderr"]
    assert "Traceback" not in done["stdout"] + done["stderr"]
    assert not re.search(r"round +\d+/", done["stdout"]), "no round may have started"
    assert done["written"] == [], "nothing may be written into the run directory"
