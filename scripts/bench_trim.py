"""Benchmark: trim a full-size (178M-parameter) randomly initialised mBERT to English + French.

    .venv/bin/python scripts/bench_trim.py                        # XNLI en+fr under ../shared/data
    .venv/bin/python scripts/bench_trim.py --verify-lines 0       # without the quick verify
    .venv/bin/python scripts/bench_trim.py --work /tmp/bench_trim # keep the folders there

Builds BertForMaskedLM with bert-base-multilingual-cased's configuration (hidden 768, 12 layers,
12 heads, intermediate 3072, 512 positions) around the real 119,547-token vocabulary, counts the
XNLI en+fr text (dev + test) with it, and runs `trim` with Geotrend's rule (a token in >= 0.005%
of a language's lines). Prints the time of each stage (load, select, rebuild, save, verify), the
parameter counts before and after, and, for comparison, the selection done Geotrend's way (a
Python list membership test per token, O(V_old x V_new)) extrapolated from a slice.
Building the model takes a while and ~1.5 GB of memory; it is not part of the timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(os.environ.get("POLYGLOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
MBERT_CONFIG = dict(vocab_size=119_547, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                    hidden_act="gelu", layer_norm_eps=1e-12, architectures=["BertForMaskedLM"])


def build_mbert(folder: Path) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from polyglot_distil.models.smoke import write_bert_tokenizer

    vocab = (SHARED / "mbert" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    write_bert_tokenizer(folder, vocab=vocab)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**MBERT_CONFIG)).save_pretrained(folder)


def geotrend_select_seconds(kept_ids, vocab_size: int, sample: int = 5_000) -> float:
    """Seconds Geotrend's `if i in kept_list` loop would take over the whole vocabulary."""
    kept_list = kept_ids.tolist()
    start = time.perf_counter()
    _ = [i for i in range(sample) if i in kept_list]
    return (time.perf_counter() - start) * vocab_size / sample


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for the model, counts and trim (default: a temporary one)")
    parser.add_argument("--verify-lines", type=int, default=100, help="lines per language for the quick verify")
    args = parser.parse_args()
    if not (SHARED / "mbert" / "vocab.txt").is_file():
        print(f"needs {SHARED}/mbert/vocab.txt and {SHARED}/xnli", file=sys.stderr)
        return 2

    import numpy as np
    from transformers.utils import logging

    from polyglot_distil.data.corpus import Caps, iter_language, parse_sources
    from polyglot_distil.vocab.count import count_corpora
    from polyglot_distil.vocab.trim import trim
    from polyglot_distil.vocab.select import GEOTREND_LINE_SHARE, Rules

    logging.disable_progress_bar()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_trim."))
    source, out = work / "mbert-random", work / "mbert-random-en-fr"
    start = time.perf_counter()
    if not (source / "model.safetensors").is_file():
        build_mbert(source)
    print(f"built {source} in {time.perf_counter() - start:.1f} s (not timed below)")

    start = time.perf_counter()
    xnli = SHARED / "xnli"
    languages = {lang: parse_sources([str(xnli / f"{split}-{lang}.tsv") for split in ("dev", "test")])
                 for lang in ("en", "fr")}
    counts = count_corpora(str(source), languages, show_progress=False)
    print(f"counted XNLI en+fr ({sum(t.lines for t in counts.totals.values()):,} lines) in "
          f"{time.perf_counter() - start:.1f} s")

    verify_texts = None
    if args.verify_lines > 0:
        verify_texts = {lang: list(iter_language(sources, Caps(max_lines=args.verify_lines, sample="head")))
                        for lang, sources in languages.items()}
    report = trim(str(source), counts, ["en", "fr"], Rules(min_line_share=GEOTREND_LINE_SHARE), out,
                  overwrite=True, verify_texts=verify_texts, show_progress=False, log=lambda *_: None)

    seconds = report["seconds"]
    print()
    print(f"{'stage':<10}{'seconds':>9}")
    for stage in ("load", "select", "rebuild", "save", "verify"):
        if stage in seconds:
            print(f"{stage:<10}{seconds[stage]:>9.2f}")
    core = seconds["select"] + seconds["rebuild"]
    print(f"{'select+rebuild':<14}{core:>5.2f}   (the trim itself, beyond loading and saving)")
    naive = geotrend_select_seconds(np.asarray(report["old_ids"]), report["vocab_size_before"])
    print(f"Geotrend-style list-membership select, extrapolated: {naive:.1f} s")
    print()
    print(f"vocabulary  {report['vocab_size_before']:>12,} -> {report['vocab_size_after']:>12,}")
    print(f"parameters  {report['params_before']:>12,} -> {report['params_after']:>12,}  "
          f"(-{100 * report['reduction']:.1f}%; Geotrend en-fr: 178M -> 112M)")
    print(f"weights     {report['weights_bytes_before'] / 1e6:>10,.1f} MB -> "
          f"{report['weights_bytes_after'] / 1e6:>10,.1f} MB; folder {report['folder_bytes_after'] / 1e6:,.1f} MB")
    if report["verify"]:
        for lang, check in report["verify"].items():
            print(f"verify {lang}: {check['compared']} covered texts compared, max |dh| {check['max_hidden_diff']:g}, "
                  f"max |dlogits| {check['max_logit_diff']:g}")
    if args.work:
        print(f"folders under {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)  # ~1.1 GB of random weights
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
