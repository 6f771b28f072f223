#!/usr/bin/env bash
# Runs a command inside the project's environment, creating it on first use:
#   ./run.sh python -m mgca_jax.main --config=configs/demo.py --workdir=workdirs/demo
#   ./run.sh python -m pytest -q tests
# The command runs in the caller's directory, so relative paths keep their meaning.
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -f "$root/.venv/.installed" ] || [ "$root/setup.py" -nt "$root/.venv/.installed" ] \
    || [ "$root/requirements.lock" -nt "$root/.venv/.installed" ]; then
  echo "setting up .venv (first use) ..." >&2
  (
    cd "$root"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -c requirements.lock -e ".[test]" >&2
    touch .venv/.installed
  )
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
source "$root/.venv/bin/activate"
exec "$@"
