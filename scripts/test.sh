#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -k count -x (and -n 0 for one process).
# Two worker processes (pytest-xdist, the test extra), each taking whole test files so that a
# file's fixtures are built once: on 2 cores the suite takes about two thirds of the time.
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
export HF_HUB_OFFLINE=1
workers=()
if "$PY" -c "import xdist" >/dev/null 2>&1; then
  workers=(-n 2 --dist loadfile)
fi
exec "$PY" -m pytest -q "${workers[@]}" "$@"
