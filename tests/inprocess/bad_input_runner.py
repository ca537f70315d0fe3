"""Runs docs/reliability.md's bad-input rows through jobs.train.main in ONE process (the
imports are paid once), each with its own temporary folder; prints one JSON result per
row. tests/inprocess/test_bad_input.py starts it in a subprocess of its own, so a row
that reaches Ray starts it there, not in the test session."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
from pathlib import Path

from jobs import train


def run_row(args: str, tmp: Path) -> dict[str, object]:
    tmp.mkdir(parents=True)
    extra = shlex.split(args.replace("$TMP", str(tmp)))
    argv = ["--set", f"run.storage={tmp}/runs", "--set", f"data.root={tmp}/data", *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = train.main(argv)
        except BaseException as exc:  # a traceback would be a failed row: show it
            code = -1
            err.write(f"Traceback: {type(exc).__name__}: {exc}")
    runs = tmp / "runs"
    written = sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) if runs.exists() else []
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "written": written}


def main() -> None:
    base, rows = Path(sys.argv[1]), json.loads(sys.argv[2])
    for i, args in enumerate(rows):
        print(json.dumps(run_row(args, base / f"row{i}")), flush=True)


if __name__ == "__main__":
    main()
