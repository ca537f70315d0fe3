"""Every row of docs/reliability.md's bad-input table, run through the real CLI."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("what", "args", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_fails_with_its_one_line(
    what: str, args: str, message: str, tmp_path: Path
) -> None:
    tmp = str(tmp_path)
    extra = shlex.split(args.replace("$TMP", tmp))
    command = [sys.executable, "-m", "jobs.train", "--set", f"run.storage={tmp}/runs",
               "--set", f"data.root={tmp}/data", *extra]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp}  # no RAY_ADDRESS: never a shared cluster
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == message.replace("$TMP", tmp), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not re.search(r"round +\d+/", done.stdout), "no round may have started"
