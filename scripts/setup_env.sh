# Sourced by scripts/demo.sh and scripts/test.sh: create or reuse a virtual environment and
# install the project into it. Sets $PY to the environment's python.
#
# - An active virtual environment ($VIRTUAL_ENV) is used as it is; otherwise .venv is created.
# - torch: an installed torch is kept (a python that already has one, e.g. a CUDA build, gets a
#   .venv that sees its packages); where none is installed, torch==2.13.0 is installed first, so
#   that pip never resolves the newest multi-GB CUDA build as a side effect.
# - Output: one line per step. pip's own output goes to .venv/pip-install.log; what it says beyond
#   the "Location ... is ignored" lines of an index that lacks a package (its warnings, with -q) is
#   shown after the step, and on a failure its last lines and the log's path.
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
PIP_LOG="$VENV/pip-install.log"
PIP_NOISE="^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.\$"
pip_step() {  # pip_step WHAT PIP-INSTALL-ARGS...: one line for the step; pip's lines that matter
  local what="$1" start=$SECONDS status=0
  shift
  printf 'setup: %s ... ' "$what"
  "$PY" -m pip install --disable-pip-version-check -q "$@" >"$PIP_LOG" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "failed"
    { grep -v "$PIP_NOISE" "$PIP_LOG" || true; } | tail -n 40 >&2
    echo "setup: pip install $* failed (exit status $status); its whole output: $PIP_LOG" >&2
    return "$status"
  fi
  echo "done ($((SECONDS - start)) s)"
  grep -v "$PIP_NOISE" "$PIP_LOG" >&2 || true  # its warnings, if any
}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  pip_step "no torch found; installing torch==2.13.0" "torch==2.13.0"
fi
# Reinstall the project only when its metadata changed (editable install: code changes need none).
STAMP="$VENV/.polyglot-distil-installed"
WANT="$(cat pyproject.toml | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$PY" -c "import polyglot_distil" >/dev/null 2>&1; then
  pip_step "installing polyglot-distil and its dependencies" -e ".[test]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
