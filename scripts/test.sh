#!/usr/bin/env bash
# Set up (or reuse) the environment and run the test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -k count -x
set -euo pipefail
source "$(dirname "$0")/setup_env.sh"
export HF_HUB_OFFLINE=1
exec "$PY" -m pytest -q "$@"
