"""scripts/setup_env.sh, the set-up that scripts/demo.sh and scripts/test.sh source, is quiet and
hides nothing real: one line per step, pip's "Location ... is ignored" lines (an index that
lacks a package) kept in the log only, pip's other warnings shown, a failure shown with pip's own
lines and the log's path and a non-zero exit. It installs torch only where none is found.

The environment is a stand-in: an active virtual environment ($VIRTUAL_ENV) whose python runs
`pip install` as a stub (it records the call, prints the noise and what the test asks, exits with
the status asked) and everything else with the real interpreter, so nothing is installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

NOISE = "WARNING: Location 'file:///opt/index/simple/pkg{i}/' is ignored: it is neither a file nor a directory."
STUB = f"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "${{*:3}}" >> "$STUB_CALLS"
  for i in 1 2 3; do echo "{NOISE.format(i='$i')}" >&2; done
  if [ -n "${{STUB_PIP_SAYS:-}}" ]; then echo "$STUB_PIP_SAYS" >&2; fi
  exit "${{STUB_PIP_STATUS:-0}}"
fi
if [ "$1" = "-c" ] && [ "$2" = "import torch" ]; then exit "$STUB_TORCH"; fi
exec {sys.executable} "$@"
"""


def set_up(tmp_path, torch: bool, pip_says: str = "", pip_status: int = 0) -> tuple[subprocess.CompletedProcess, list]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(STUB, encoding="utf-8")
    python.chmod(0o755)
    calls = tmp_path / "pip-calls.txt"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "STUB_CALLS": str(calls), "STUB_TORCH": "0" if torch else "1",
           "STUB_PIP_SAYS": pip_says, "STUB_PIP_STATUS": str(pip_status)}
    done = subprocess.run(["bash", "-c", 'set -euo pipefail; source scripts/setup_env.sh; echo "PY=$PY"'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return done, calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []


def test_setup_says_one_line_per_step_and_only_pips_real_warnings(tmp_path):
    warning = "WARNING: a dependency of yours is yanked (a real warning)"
    done, calls = set_up(tmp_path, torch=False, pip_says=warning)
    assert done.returncode == 0, done.stderr
    assert calls == ["install --disable-pip-version-check -q torch==2.13.0",
                     "install --disable-pip-version-check -q -e .[test]"]
    assert done.stdout.splitlines() == [
        "setup: no torch found; installing torch==2.13.0 ... done (0 s)",
        "setup: installing polyglot-distil and its dependencies ... done (0 s)",
        f"PY={tmp_path / 'venv' / 'bin' / 'python'}"]
    assert done.stderr.splitlines() == [warning, warning]  # the noise is in the log only
    assert "is ignored" in (tmp_path / "venv" / "pip-install.log").read_text(encoding="utf-8")


def test_setup_keeps_an_installed_torch_and_installs_the_project_once(tmp_path):
    done, calls = set_up(tmp_path, torch=True)
    assert done.returncode == 0, done.stderr
    assert calls == ["install --disable-pip-version-check -q -e .[test]"] and done.stderr == ""
    again, calls = set_up(tmp_path, torch=True)  # the stamp says the metadata did not change
    assert again.returncode == 0 and calls == ["install --disable-pip-version-check -q -e .[test]"]
    assert again.stdout.splitlines() == [f"PY={tmp_path / 'venv' / 'bin' / 'python'}"] and again.stderr == ""


@pytest.mark.parametrize("torch", [False, True])
def test_a_pip_failure_stops_the_setup_with_pips_own_lines(tmp_path, torch):
    error = "ERROR: No matching distribution found for the requirement"
    done, calls = set_up(tmp_path, torch=torch, pip_says=error, pip_status=1)
    assert done.returncode == 1 and "PY=" not in done.stdout
    assert len(calls) == 1 and done.stdout.splitlines()[-1].endswith(" ... failed")
    lines = done.stderr.splitlines()
    assert lines[0] == error and "is ignored" not in done.stderr
    assert lines[-1].startswith("setup: pip install ") and "failed (exit status 1)" in lines[-1]
    assert lines[-1].endswith(str(tmp_path / "venv" / "pip-install.log"))
    assert not (tmp_path / "venv" / ".polyglot-distil-installed").exists()
