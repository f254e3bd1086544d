"""Hashes of a demo run's outputs, for checking that a refactor changes no result:

    python scripts/hash_demo.py out/demo/run > before.txt   # ... change the code, re-run the demo ...
    python scripts/hash_demo.py out/demo/run | diff before.txt -

Covers the trimmed model and tokenizer, the student, phase 1 (final and best), the task teacher,
phase 2 (best) and the evaluation report without its timings. Keep the teacher (out/demo/teacher)
between the two runs: the smoke tokenizer's training is not deterministic from run to run.
"""

import hashlib
import json
import sys
from pathlib import Path

FILES = ["trim/model/model.safetensors", "trim/model/tokenizer.json", "trim/model/vocab.txt",
         "student/model/model.safetensors", "general/run/final/model.safetensors",
         "general/run/best/model.safetensors", "finetune/run/best/model.safetensors",
         "task/run/best/model.safetensors"]
TIMINGS = ("efficiency", "seconds", "created", "finished", "timing", "wall_seconds")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def without_timings(x):
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if k not in TIMINGS}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


def main(run: Path) -> None:
    for rel in FILES:
        print(f"{digest((run / rel).read_bytes())}  {rel}")
    report = json.loads((run / "eval/report/report.json").read_text())
    print(f"{digest(json.dumps(without_timings(report), sort_keys=True).encode())}  report (no timings)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo/run"))
