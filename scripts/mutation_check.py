"""Does the test suite catch plausible wiring mistakes? Apply each known mutation to the code, one
at a time, run the tests that should catch it, and say whether they did (killed) or not
(SURVIVED). The code is restored after each one, also on an interruption.

    python scripts/mutation_check.py            # all mutations, about 5 minutes on 2 cores

It edits the files of the checkout it lives in: run it from a copy (git worktree add /tmp/m HEAD;
python /tmp/m/scripts/mutation_check.py) while anything else uses this checkout.
    python scripts/mutation_check.py --only 2i   # the ones whose name holds "2i"

Exit status 1 when a mutation survives: a test is missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "polyglot_distil"

# (name, file, original text, mutated text, tests that must fail)
MUTATIONS = [
    ("hidden state i paired with teacher state i instead of 2i", PKG / "models" / "student.py",
     "return [(0, 0)] + [(j + 1, t + 1) for j, t in enumerate(layer_map)]",
     "return [(0, 0)] + [(j + 1, j + 1) for j, t in enumerate(layer_map)]",
     ["tests/test_distil_general.py", "-k", "pairs_student_state"]),
    ("vocabulary-sized tensors truncated instead of re-indexed", PKG / "vocab" / "trim_model.py",
     "tensor.detach().index_select(axis, kept)", "tensor.detach().narrow(axis, 0, len(kept))",
     ["tests/test_trim.py", "-k", "bitwise or every_tensor"]),
    ("a tensor indexed by token id along its second axis left alone by the trim", PKG / "vocab" / "trim_model.py",
     'OTHER_AXES = {"final_logits_bias": 1, "cls.predictions.dense.weight": 1}', "OTHER_AXES = {}",
     ["tests/test_trim_families.py", "-k", "finds_each_token_axis"]),
    ("BPE merge ancestors not kept by the trim", PKG / "vocab" / "trim_tokenizer.py",
     "            if part not in kept:\n                kept.add(part)\n", "            if False:\n",
     ["tests/test_trim_bpe.py", "-k", "gemma_tokenizer_model or prefix_and_suffix"]),
    ("padding not masked in the attention MSE", PKG / "distill" / "losses.py",
     "pairs = weights[:, None, :, None] * weights[:, None, None, :]",
     "pairs = torch.ones_like(weights[:, None, :, None] * weights[:, None, None, :])",
     ["tests/test_losses.py"]),
    ("T² dropped from the logit KL", PKG / "distill" / "losses.py",
     "return kl / denominator * temperature**2", "return kl / denominator",
     ["tests/test_losses.py"]),
    ("theta0 not restored before stage 2 of LT-SFT", PKG / "distill" / "sparse.py",
     "        self.choose()\n        self.reset()\n", "        self.choose()\n",
     ["tests/test_sparse.py"]),
    ("the teacher's class order ignored in phase 2", PKG / "distill" / "classifier_distillation.py",
     '                t["logits"] = t["logits"][:, self.teacher_order]\n', "",
     ["tests/test_distil_task.py", "-k", "another_class_order"]),
    ("a pooler the loading class lacks is dropped by the trim", PKG / "models" / "checkpoint.py",
     "    if not unexpected:\n        return {}\n", "    return {}\n",
     ["tests/test_trim.py", "-k", "every_tensor"]),
]


def pytest(tests: list[str]) -> subprocess.CompletedProcess:
    # this checkout's code, even where an editable install points at another one
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, capture_output=True, text=True, env=env)


def run(name: str, path: Path, original: str, mutated: str, tests: list[str]) -> bool:
    """True when the tests fail on the mutated code (the mutation is killed) by a failed assertion,
    not by an error that any change would cause."""
    source = path.read_text(encoding="utf-8")
    if source.count(original) != 1:
        raise SystemExit(f"{path}: the text to mutate for {name!r} is not there once; update this script")
    try:
        path.write_text(source.replace(original, mutated), encoding="utf-8")
        result = pytest(tests)
    finally:
        path.write_text(source, encoding="utf-8")
    return result.returncode == 1 and " failed" in result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the mutations whose name holds this text")
    args = parser.parse_args()
    survived = 0
    chosen = [m for m in MUTATIONS if not args.only or args.only in m[0]]
    for tests in {tuple(m[4]) for m in chosen}:  # the tests must pass on the code as it is
        baseline = pytest(list(tests))
        if baseline.returncode != 0:
            raise SystemExit(f"the tests {' '.join(tests)} fail without any mutation:\n{baseline.stdout[-2000:]}")
    for name, path, original, mutated, tests in chosen:
        start = time.time()
        killed = run(name, path, original, mutated, tests)
        survived += not killed
        print(f"{'killed  ' if killed else 'SURVIVED'}  {name}  ({' '.join(tests)}; {time.time() - start:.0f} s)",
              flush=True)
    print("every mutation was killed" if not survived else f"{survived} mutation(s) survived: a test is missing")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
