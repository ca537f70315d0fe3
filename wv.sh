#!/usr/bin/env bash
# Wide Valley's one entry point: sets up .venv on first use, then runs a command in it.
#   ./wv.sh train [--config PATH] [--set k=v ...]   the coupled training job (jobs.train)
#   ./wv.sh test [pytest args]                     ruff, mypy and the whole test suite
#   ./wv.sh test --quick                           ruff, mypy, the math and in-process tiers
#   ./wv.sh <module> [args]                        python -m <module> inside the venv
set -euo pipefail
cd "$(dirname "$0")"

PY=${WV_PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.wv-installed

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "wv: creating $VENV with $($PY --version)" >&2
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        echo "wv: installing dependencies (first run takes about a minute)" >&2
        # torch first and pinned: the CPU build; an unpinned torch would pull a CUDA build.
        if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
            "$VENV/bin/python" -m pip install -q "torch==${WV_TORCH_VERSION:-2.13.0}"
        fi
        "$VENV/bin/python" -m pip install -q -e '.[dev]'
        echo "$want" > "$STAMP"
    fi
}

run_tests() {
    local quick=0
    if [ "${1:-}" = "--quick" ]; then
        quick=1
        shift
    fi
    "$VENV/bin/python" -m ruff check .
    "$VENV/bin/python" -m ruff format --check .
    "$VENV/bin/python" -m mypy
    # pytest exits 5 when it collects nothing: that is a failure here, as it should be.
    # The tiers without Ray run one torch thread per test, so they run on two workers
    # (a file stays on one worker: its module fixtures are computed once); Ray's tiers
    # run one test at a time, since their clusters take every core.
    local cores=(-n 2 --dist loadfile)
    if [ "$quick" = 1 ]; then
        # Between edits: no Ray, no subprocess runs (tests marked slow); tests/README.md.
        "$VENV/bin/python" -m pytest "${cores[@]}" tests/unit tests/inprocess -m "not slow" "$@"
    elif [ "$#" = 0 ]; then
        # The whole suite, in two runs that together hold every test (the markers ray
        # and e2e split them); each keeps every test's duration for the next session.
        "$VENV/bin/python" -m pytest "${cores[@]}" -m "not ray and not e2e" \
            --junitxml=test-reports/pytest-without-ray.xml
        "$VENV/bin/python" -m pytest -m "ray or e2e" --junitxml=test-reports/pytest-ray.xml
    else
        "$VENV/bin/python" -m pytest "$@"
    fi
}

setup
cmd=${1:-train}
shift || true
case "$cmd" in
    train) exec "$VENV/bin/python" -m jobs.train "$@" ;;
    test) run_tests "$@" ;;
    *) exec "$VENV/bin/python" -m "$cmd" "$@" ;;
esac
