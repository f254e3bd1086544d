"""CPU speed of the deployed forms of one student, side by side: the float model, its int8 folders
(`quantize`) and its ONNX graphs (`export onnx`), timed in one process, in turns, so that a busy
machine slows them all alike.

    python scripts/bench_deploy.py                       # the yardstick's rows (c), (g), (h), (i), (j)
    python scripts/bench_deploy.py --rounds 21 --model float=DIR --model int8=DIR --model onnx=DIR/model.onnx

Each round runs every model once at batch 1 x 128 tokens on 1 thread (latency) and once at batch
32 x 128 on all threads (throughput), after one untimed call of each shape; the figures are the
medians over the rounds. The inputs are the fixed pseudo-random ids `eval xnli` times with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "out" / "bench-quality"
ROWS = {"(c) float": WORK / "c" / "best", "(g) dynamic int8": WORK / "g", "(h) QAT int8": WORK / "h" / "best",
        "(i) ONNX": WORK / "onnx", "(j) ONNX int8": WORK / "onnx" / "model_int8.onnx"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", metavar="NAME=PATH",
                        help="a model to time (repeatable; default: the yardstick's rows c, g, h, i, j)")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    import torch

    from polyglot_distil.eval.efficiency import THROUGHPUT_BATCH, TIMING_TOKENS, _timing_batch
    from polyglot_distil.models.classifier import load_classifier
    from polyglot_distil.models.loading import quiet_transformers

    quiet_transformers()
    paths = dict(spec.split("=", 1) for spec in args.model) if args.model else ROWS
    missing = [str(p) for p in paths.values() if not Path(p).exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)} (run scripts/bench_quality.py first, or pass --model)")
    models = {name: load_classifier(str(path)) for name, path in paths.items()}
    threads = torch.get_num_threads()
    shapes = {"latency": (1, 1), "throughput": (THROUGHPUT_BATCH, threads)}
    seconds = {(name, shape): [] for name in models for shape in shapes}

    def call(classifier, batch: int, count: int) -> float:
        torch.set_num_threads(count)
        inputs = _timing_batch(classifier, batch, TIMING_TOKENS, "cpu")
        with torch.inference_mode():
            start = time.perf_counter()
            classifier.model(**inputs)
            return time.perf_counter() - start

    for name, classifier in models.items():  # warm-up
        for batch, count in shapes.values():
            call(classifier, batch, count)
    for _ in range(args.rounds):
        for name, classifier in models.items():
            for shape, (batch, count) in shapes.items():
                seconds[name, shape].append(call(classifier, batch, count))
    torch.set_num_threads(threads)
    base = next(iter(models))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    print(f"{args.rounds} rounds; latency: 1 thread, batch 1 x {TIMING_TOKENS}; throughput: {threads} threads, "
          f"batch {THROUGHPUT_BATCH} x {TIMING_TOKENS}")
    for name in models:
        latency, rate = median[name, "latency"], THROUGHPUT_BATCH / median[name, "throughput"]
        print(f"{name:24s} latency {1000 * latency:7.1f} ms ({median[base, 'latency'] / latency:.2f}x)   "
              f"throughput {rate:6.1f} pairs/s ({rate * median[base, 'throughput'] / THROUGHPUT_BATCH:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
