"""Check again, against the tests as they are now, the mutants a mutmut run left alive (survived,
no tests, not checked), and record the verdicts where mutmut keeps them (./mutants/**/*.py.meta), so
that `scripts/mutation.sh --score` prints the new scores. A test added to kill a mutant cannot
revive one that is killed, so this gives the figures of a whole new run for the cost of the few
mutants still alive (a whole run also re-traces every test, and starts again from nothing when
[tool.mutmut]'s test selection changes).

    python scripts/mutation_recheck.py polyglot_distil.eval.metrics -- tests/test_metrics.py
    python scripts/mutation_recheck.py 'polyglot_distil.vocab.select.x_rule_mask*' -- tests/test_vocab.py
    python scripts/mutation_recheck.py --timeouts vocab.select -- tests/test_vocab.py   # timed out ones too

Run it from the checkout root with the environment scripts/mutation.sh sets (scripts/mutation.sh
--recheck ... does). Each mutant runs the given tests in a process forked from one that has only
collected them (mutmut's fork server does the same), with mutmut's MUTANT_UNDER_TEST naming it.
As mutmut does, a mutant runs only the tests that call its function (found by one run of the tests
in mutmut's "stats" mode first); a mutant of a function none of them calls is "no tests", not run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from mutmut.utils.format_utils import mangled_name_from_mutant_name

ROOT = Path(__file__).resolve().parents[1]
ALIVE = {0: "survived", 5: "no tests", 33: "no tests", None: "not checked"}  # a timeout is left as it is
TIMED_OUT = {36, 24, -24, 152, 255}  # mutmut's codes: its time limit, SIGXCPU (on a busy machine, also a
                                     # mutant that only errors out, its tests starved of CPU time)
TIMEOUT_S = 120


def alive(selection: list[str], timeouts: bool = False) -> list[tuple[Path, str]]:
    """(meta file, mutant name) of every mutant not killed whose name matches `selection`, in the
    order of the patterns (the first ones first, when time is short); with `timeouts`, those that
    timed out too."""
    found = []
    for meta in sorted((ROOT / "mutants").glob("polyglot_distil/**/*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            first = next((i for i, s in enumerate(selection) if name.startswith(s + ".") or fnmatch.fnmatch(name, s)),
                         None)
            if first is not None and (code in ALIVE or timeouts and code in TIMED_OUT):
                found.append((first, meta, name))
    return [(meta, name) for _, meta, name in sorted(found, key=lambda found: found[0])]


def run_one(name: str, tests: list[str]) -> int:
    """pytest's exit status for `tests` with mutant `name` active (36: timed out)."""
    import pytest

    pid = os.fork()
    if pid == 0:
        from mutmut.mutation.trampoline import set_mutant_under_test

        set_mutant_under_test(name)
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        code = pytest.main(["--rootdir=.", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests])
        os._exit(int(code))
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return 36


def tests_by_function(tests: list[str]) -> dict[str, list[str]]:
    """{mutated function (mutmut's mangled name): the ids of the tests that call it}, from one run
    of `tests` in mutmut's "stats" mode, in a forked process (threads the tests leave behind would
    deadlock the later forks)."""
    import tempfile

    import pytest

    with tempfile.NamedTemporaryFile(suffix=".json") as found:
        pid = os.fork()
        if pid == 0:
            from collections import defaultdict

            from mutmut.mutation.trampoline import set_mutant_under_test
            from mutmut.state import state

            hits: dict[str, list[str]] = defaultdict(list)

            class Calls:
                def pytest_runtest_teardown(self, item, nextitem):
                    for function in state()._stats:
                        hits[function].append(item.nodeid)
                    state()._stats.clear()

            set_mutant_under_test("stats")
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            code = pytest.main(["--rootdir=.", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
                               plugins=[Calls()])
            Path(found.name).write_text(json.dumps(hits))
            os._exit(int(code))
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(tests)} fail in mutmut's stats mode")
        return json.loads(Path(found.name).read_text())


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__)
        return 2
    timeouts = "--timeouts" in argv[:argv.index("--")]
    selection = [a for a in argv[:argv.index("--")] if a != "--timeouts"]
    tests = argv[argv.index("--") + 1:]
    shutil.copytree(ROOT / "tests", ROOT / "mutants" / "tests", dirs_exist_ok=True)  # the tests as they are now
    os.chdir(ROOT / "mutants")
    sys.path.insert(0, str(ROOT / "mutants"))
    import pytest

    os.environ["MUTANT_UNDER_TEST"] = ""
    with open(os.devnull, "w") as quiet:  # import the tests and the mutated code once, run nothing
        stdout, sys.stdout = sys.stdout, quiet
        try:
            collected = pytest.main(["--rootdir=.", "--collect-only", "-q", "-p", "no:cacheprovider", *tests])
        finally:
            sys.stdout = stdout
    if collected != 0:
        print(f"cannot collect {' '.join(tests)} (pytest exit {collected})")
        return 1
    if run_one("", tests) != 0:  # the tests must pass on the code as it is, or every mutant looks killed
        print(f"{' '.join(tests)} fail without any mutant: fix them first")
        return 1
    todo = alive(selection, timeouts)
    callers = tests_by_function(tests)
    print(f"{len(todo)} mutants not killed match {' '.join(selection)}; running the tests of {' '.join(tests)} "
          "that call its function on each")
    for number, (meta, name) in enumerate(todo, 1):
        chosen = callers.get(mangled_name_from_mutant_name(name))
        code = run_one(name, chosen) if chosen else 33
        if code == 4:
            raise SystemExit(f"pytest could not run {tests} (exit 4)")
        data = json.loads(meta.read_text())
        data["exit_code_by_key"][name] = code
        meta.write_text(json.dumps(data))
        verdict = {1: "killed", 3: "killed", 36: "timeout"}.get(code) or ALIVE.get(code, f"exit {code}")
        print(f"[{number}/{len(todo)}] {verdict}: {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
