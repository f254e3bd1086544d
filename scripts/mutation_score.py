"""Print the mutation score per module from the results mutmut left in ./mutants (scripts/mutation.sh).

    python scripts/mutation_score.py                        # every mutated module
    python scripts/mutation_score.py polyglot_distil.vocab.count 'polyglot_distil.fingerprints.x_token_cache_key*'

score = killed / checked, where checked = killed + survived + timeout + no tests (a mutant no selected
test calls counts against the score); a timeout is listed apart, it is a kill only when the mutant loops.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parents[1]


def results() -> dict[str, dict[str, str]]:
    """{module: {mutant name: status}} for every .meta file mutmut wrote."""
    by_module = {}
    for meta in sorted((ROOT / "mutants").glob("polyglot_distil/**/*.py.meta")):
        module = ".".join(meta.relative_to(ROOT / "mutants").with_suffix("").with_suffix("").parts)
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        by_module[module] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return by_module


def main(selection: list[str]) -> int:
    by_module = results()
    if not by_module:
        print("no results in ./mutants: run scripts/mutation.sh first")
        return 1
    print(f"{'module':45} {'killed/checked':>15} {'score':>6} {'survived':>8} {'timeout':>7} {'no tests':>8} "
          f"{'unchecked':>9} {'total':>6}")
    survivors = []
    for module, statuses in by_module.items():
        chosen = {n: s for n, s in statuses.items()
                  if not selection or any(n.startswith(m + ".") or fnmatch.fnmatch(n, m) for m in selection)}
        if not chosen:
            continue
        count = Counter(chosen.values())
        checked = sum(v for k, v in count.items() if k != "not checked")
        score = f"{count['killed'] / checked:.0%}" if checked else "-"
        name = module if len(chosen) == len(statuses) else module + " (part)"
        print(f"{name:45} {count['killed']:>7}/{checked:<7} {score:>6} {count['survived']:>8} {count['timeout']:>7} "
              f"{count['no tests']:>8} {count['not checked']:>9} {len(chosen):>6}")
        survivors += [n for n, s in chosen.items() if s in ("survived", "no tests", "suspicious")]
    if survivors:
        print("\nnot killed (mutmut show NAME):")
        print("\n".join("  " + n for n in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
