"""Benchmark XNLI prediction: length-sorted batches against data-order batches and one pair at a time.

    .venv/bin/python scripts/bench_eval.py                    # 2,000 pairs of XNLI test-fr
    .venv/bin/python scripts/bench_eval.py --pairs 5010 --hidden 256 --layers 6

Builds a random-weight BERT classifier (the real mBERT vocabulary when ../shared/data is
present) and prints pairs per second for each way of batching, the largest logit difference
between them, and how long the efficiency measurement of `eval xnli` takes on this model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--single-pairs", type=int, default=300, help="pairs for the one-at-a-time run")
    args = parser.parse_args()

    import torch

    from polyglot_distil.eval.efficiency import measure_efficiency
    from polyglot_distil.models.classifier import load_classifier, predict_logits
    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.models.smoke import build_smoke_model

    xnli = SHARED / "xnli" / "test-fr.tsv"
    data = read_nli(xnli if xnli.exists() else ROOT / "corpora" / "nli" / "test-fr.tsv")
    data = data.select(range(min(args.pairs, len(data))))
    with tempfile.TemporaryDirectory() as tmp:
        vocab = SHARED / "mbert" / "vocab.txt"
        folder = build_smoke_model(
            Path(tmp) / "model", "bert", vocab_file=vocab if vocab.exists() else None,
            texts=sorted((ROOT / "corpora").glob("*/sample.txt")), head="sequence-classification",
            hidden_size=args.hidden, num_layers=args.layers, num_heads=max(1, args.hidden // 64),
            intermediate_size=4 * args.hidden)
        classifier = load_classifier(folder)
        params = sum(p.numel() for p in classifier.model.parameters())
        print(f"model: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M parameters; "
              f"{len(data)} pairs of {xnli.name}; torch threads {torch.get_num_threads()}")

        def run(pairs: int, **kw) -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            logits = predict_logits(classifier.model, classifier.tokenizer, data.premises[:pairs],
                                    data.hypotheses[:pairs], progress=False, **kw)
            return logits, pairs / (time.perf_counter() - start)

        predict_logits(classifier.model, classifier.tokenizer, data.premises[:64], data.hypotheses[:64],
                       progress=False)  # warm-up
        sorted_logits, sorted_rate = run(len(data), batch_size=args.batch_size)
        plain_logits, plain_rate = run(len(data), batch_size=args.batch_size, sort_by_length=False)
        single = min(args.single_pairs, len(data))
        single_logits, single_rate = run(single, batch_size=1, sort_by_length=False)
        print(f"length-sorted batches of {args.batch_size}: {sorted_rate:8.1f} pairs/s")
        print(f"data-order batches of {args.batch_size}:    {plain_rate:8.1f} pairs/s "
              f"(sorted is {sorted_rate / plain_rate:.2f}x)")
        print(f"one pair at a time:            {single_rate:8.1f} pairs/s (first {single} pairs)")
        print(f"max |logit difference|: sorted vs data order {np.abs(sorted_logits - plain_logits).max():.2e}, "
              f"sorted vs one at a time {np.abs(sorted_logits[:single] - single_logits).max():.2e}; "
              f"same predictions: {bool((sorted_logits.argmax(1) == plain_logits.argmax(1)).all())}")
        del classifier
        start = time.perf_counter()
        figures = measure_efficiency(str(folder), repeats=10)
        print(f"efficiency measurement ({time.perf_counter() - start:.1f} s): "
              f"latency {figures['cpu_latency_ms']:.2f} ms (1 thread, batch 1 x 128), "
              f"throughput {figures['cpu_throughput_pairs_per_s']:.1f} pairs/s (batch 32 x 128), "
              f"peak memory +{figures['peak_memory_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
