# Sourced by scripts/demo.sh and scripts/test.sh: create or reuse a virtual environment and
# install the project into it. Sets $PY to the environment's python.
#
# - An active virtual environment ($VIRTUAL_ENV) is used as it is; otherwise .venv is created.
# - torch: an installed torch is kept (a python that already has one, e.g. a CUDA build, gets a
#   .venv that sees its packages); where none is installed, torch==2.13.0 is installed first, so
#   that pip never resolves the newest multi-GB CUDA build as a side effect.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BASE_PY="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV="$VIRTUAL_ENV"
else
  VENV="$ROOT/.venv"
  if [ ! -x "$VENV/bin/python" ]; then
    if "$BASE_PY" -c "import torch" >/dev/null 2>&1; then
      echo "setup: creating .venv (reusing the torch installed for $BASE_PY)"
      "$BASE_PY" -m venv --system-site-packages "$VENV"
    else
      echo "setup: creating .venv"
      "$BASE_PY" -m venv "$VENV"
    fi
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing torch==2.13.0"
  "${PIP[@]}" "torch==2.13.0"
fi
# Reinstall the project only when its metadata changed (editable install: code changes need none).
STAMP="$VENV/.polyglot-distil-installed"
WANT="$(cat pyproject.toml | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$PY" -c "import polyglot_distil" >/dev/null 2>&1; then
  echo "setup: installing polyglot-distil and its dependencies"
  "${PIP[@]}" -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
