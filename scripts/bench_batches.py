"""Length-bucketed training batches: how many token positions an epoch computes on, with and
without `--length-buckets`, on the yardstick's training data (English XNLI test, 5,010 pairs,
the real XLM-R tokenizer, which multilingual-e5-small shares), and the time of one forward and
backward pass of a small XLM-R-shaped model over the first batches of each, side by side.

    python scripts/bench_batches.py [--batch-size 32] [--buckets 50] [--timed-batches 10]

Token positions are exact (no timing); the step times are measured on this machine, both in one
run, and move with its load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(ROOT.parent / "shared" / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--buckets", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--timed-batches", type=int, default=10)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.data.nli_batches import NLIBatches, encode_pairs

    started = time.perf_counter()
    tokenizer_dir = SHARED / "xlmr"
    data_file = SHARED / "xnli" / "test-en.tsv"
    if not (tokenizer_dir / "tokenizer.json").is_file() or not data_file.is_file():
        raise SystemExit(f"needs {tokenizer_dir}/tokenizer.json and {data_file} (../shared/data)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = read_nli(str(data_file))
    pairs = encode_pairs(tokenizer, data, args.max_length, progress=False)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=4, num_attention_heads=12,
                              intermediate_size=1536, max_position_embeddings=514, num_labels=3)
    model = XLMRobertaForSequenceClassification(config)
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for name, buckets in (("random batches", 0), (f"length buckets ({args.buckets} batches)", args.buckets)):
        batches = NLIBatches(pairs, data.labels, args.batch_size, seed=0, length_buckets=buckets)
        positions = sum(batches.batch(k)["input_ids"].numel() for k in range(batches.batches_per_epoch))
        real = int(sum(batches.batch(k)["attention_mask"].sum() for k in range(batches.batches_per_epoch)))
        start = time.perf_counter()
        for k in range(args.timed_batches):
            batch = batches.batch(k)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            model.zero_grad(set_to_none=True)
        seconds = (time.perf_counter() - start) / args.timed_batches
        rows.append((name, positions, real, seconds))
    print(f"{len(pairs):,} pairs, batch {args.batch_size}, max length {args.max_length}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batches':32} {'positions/epoch':>16} {'real tokens':>12} {'padding':>8} {'s/step':>8}")
    for name, positions, real, seconds in rows:
        print(f"{name:32} {positions:>16,} {real:>12,} {1 - real / positions:>8.1%} {seconds:>8.3f}")
    print(f"positions: {rows[0][1] / rows[1][1]:.2f}x fewer with buckets; step time "
          f"{rows[0][3] / rows[1][3]:.2f}x faster (first {args.timed_batches} batches, 4-layer hidden-384 model)")
    print(f"wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
