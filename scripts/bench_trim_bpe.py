"""Check a BPE trim at a realistic vocabulary size: what the merge closure adds, and exactness on
tens of thousands of random texts.

    .venv/bin/python scripts/bench_trim_bpe.py                  # 32k merges, ../shared/data
    .venv/bin/python scripts/bench_trim_bpe.py --vocab-size 64000 --texts 50000

For each BPE flavour (byte-level as RoBERTa's; SentencePiece-style with byte fallback as Gemma's),
trains a tokenizer of `--vocab-size` tokens with `tokenizers` on all of Global Voices en+sw and the
XNLI dev premises of 15 languages, selects the tokens seen twice in 2,000 Swahili lines (plus the
specials and the byte alphabet / pieces, as `trim` does), closes the selection under merges and
rebuilds the tokenizer as `trim` does. Then encodes random texts with both tokenizers (runs of
words from 5,000 other Swahili lines, from the other languages, and random characters) and
prints: tokens selected, merge ancestors added, merges before and after, texts covered, covered
texts whose tokens differ (must be 0), and texts with an `<unk>` the original did not have
(must be 0). The tokenizer code only; tests/test_trim_bpe.py runs models too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the tests' tokenizer builders
os.environ.setdefault("POLYGLOT_SHARED_DATA", str(ROOT.parent / "shared" / "data"))


def main() -> int:
    import numpy as np
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import vocab_models
    from polyglot_distil.vocab.trim_tokenizer import close_under_merges, trim_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--texts", type=int, default=20000, help="random Swahili texts (a quarter more of others)")
    args = parser.parse_args()
    shared = Path(os.environ["POLYGLOT_SHARED_DATA"])
    swahili = (shared / "text" / "GlobalVoices.en-sw.sw").read_text(encoding="utf-8").splitlines()
    lines = (shared / "text" / "GlobalVoices.en-sw.en").read_text(encoding="utf-8").splitlines() + swahili
    for path in sorted((shared / "xnli").glob("dev-*.tsv")):
        lines += [row.split("\t")[0] for row in path.read_text(encoding="utf-8").splitlines()[1:]]
    texts = (vocab_models.random_texts(swahili[5000:10000], args.texts, seed=1)
             + vocab_models.random_texts(lines[-20000:], args.texts // 4, seed=2)
             + vocab_models.random_unicode(args.texts // 10, seed=3))

    for flavour in ("byte-level", "sentencepiece"):
        start = time.perf_counter()
        backend = (vocab_models.byte_level_bpe(lines, args.vocab_size) if flavour == "byte-level"
                   else vocab_models.sentencepiece_bpe(lines, args.vocab_size))
        trained = time.perf_counter() - start
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
        counts = Counter(i for line in swahili[:2000] for i in backend.encode(line, add_special_tokens=False).ids)
        always = (pre_tokenizers.ByteLevel.alphabet() if flavour == "byte-level" else vocab_models.BYTE_PIECES)
        selected = sorted({i for i, n in counts.items() if n >= 2} | set(range(len(vocab_models.SPECIALS)))
                          | {backend.token_to_id(token) for token in always})
        start = time.perf_counter()
        kept, added = close_under_merges(tokenizer, np.asarray(selected, dtype=np.int64))
        closing = time.perf_counter() - start
        trimmed = trim_tokenizer(tokenizer, kept).backend_tokenizer
        merges = [len(json.loads(t.to_str())["model"]["merges"]) for t in (backend, trimmed)]
        id_map = np.full(backend.get_vocab_size(), -1, dtype=np.int64)
        id_map[kept] = np.arange(len(kept))
        unk_before, unk_after = backend.token_to_id("<unk>"), trimmed.token_to_id("<unk>")
        covered = differing = new_unk = 0
        for text in texts:
            old = backend.encode(text, add_special_tokens=False).ids
            new = trimmed.encode(text, add_special_tokens=False).ids
            if (id_map[old] >= 0).all():
                covered += 1
                differing += kept[new].tolist() != old
            new_unk += unk_before not in old and unk_after in new
        print(f"{flavour} BPE: {backend.get_vocab_size():,} tokens (trained in {trained:.0f} s); selected "
              f"{len(selected):,}, + {added:,} merge ancestors = {len(kept):,} kept (closure {closing:.2f} s); merges "
              f"{merges[0]:,} -> {merges[1]:,}; {len(texts):,} random texts: {covered:,} covered, {differing} of them "
              f"with other tokens, {new_unk} with an <unk> the original did not have")
        if differing or new_unk:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
