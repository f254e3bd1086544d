"""Tiny multilingual models with random weights, for the offline demo and the tests.

A *smoke model* proves that the pipeline runs; its numbers mean nothing. Two families, the
same shape as the real ones:

- BERT (mBERT-like): a cased WordPiece tokenizer (`[PAD] [UNK] [CLS] [SEP] [MASK]`, `##`
  continuations), trained on the given text or taken from a real `vocab.txt`;
- XLM-R (XLM-RoBERTa-like): a SentencePiece-style Unigram tokenizer (`<s>=0 <pad>=1 </s>=2
  <unk>=3 ... <mask>` last, `▁` word boundaries), trained on the given text or taken from a
  real `tokenizer.json`.

    build_smoke_model("out/teacher", "bert", texts=["corpora/en/sample.txt", ...])
    build_smoke_model("out/xlmr", "xlmr", tokenizer_json="../shared/data/xlmr/tokenizer.json")

Every folder holds `config.json`, `model.safetensors` and the tokenizer files that
`AutoTokenizer.from_pretrained` reads (plus `vocab.txt` for BERT), and a README saying it is
a smoke model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

SMOKE_CARD = """---
tags: [polyglot-distil, smoke-test]
---
# Smoke model (random weights)

Built by `polyglot_distil.models.smoke` to exercise the pipeline offline. Its weights are random:
any accuracy it shows is meaningless. Never report it as a result.
"""


def _lines(files: Iterable[str | Path]) -> list[str]:
    out: list[str] = []
    for f in files:
        out.extend(line for line in Path(f).read_text(encoding="utf-8").splitlines() if line.strip())
    return out


def write_bert_tokenizer(folder: str | Path, vocab: list[str] | None = None, texts: Iterable[str | Path] = (),
                         vocab_size: int = 1000, lowercase: bool = False) -> None:
    """A BERT WordPiece tokenizer folder (`vocab.txt`, `tokenizer.json`, `tokenizer_config.json`)
    from a token list in id order, or trained on `texts` (files)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab is None:
        from tokenizers import BertWordPieceTokenizer

        trainer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=False if not lowercase else None)
        trainer.train_from_iterator(_lines(texts), vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                    min_frequency=1, limit_alphabet=1000, show_progress=False)
        # The trainer orders tied tokens differently from run to run: sort for a reproducible model.
        vocab = BERT_SPECIALS + sorted(t for t in trainer.get_vocab() if t not in BERT_SPECIALS)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_xlmr_tokenizer(folder: str | Path, tokenizer_json: str | Path | None = None,
                         texts: Iterable[str | Path] = (), vocab_size: int = 1000) -> None:
    """An XLM-R Unigram tokenizer folder (`tokenizer.json`, `tokenizer_config.json`), copied from
    a real `tokenizer.json` or trained on `texts` (files)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    else:
        _train_unigram(_lines(texts), vocab_size).save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _train_unigram(lines: list[str], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = UnigramTrainer(vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>",
                             shrinking_factor=0.75, max_piece_length=16, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    # Multi-threaded training varies the scores' last digits and the order of ties from run to
    # run: round and sort the pieces for a reproducible model.
    state = json.loads(tokenizer.to_str())
    specials, pieces = state["model"]["vocab"][:len(XLMR_SPECIALS)], state["model"]["vocab"][len(XLMR_SPECIALS):]
    pieces = sorted(([piece, round(score, 6)] for piece, score in pieces), key=lambda p: (-p[1], p[0]))
    # The trainer appends the required characters with made-up scores (min - 1e-4, min - 2e-4,
    # ...) in hash order: give the single characters after the last longer piece their scores in
    # alphabetical order instead.
    tail = max(i for i, (piece, _) in enumerate(pieces) if len(piece) > 1) + 1
    scores = [score for _, score in pieces[tail:]]
    pieces[tail:] = [[piece, score] for piece, score in zip(sorted(p for p, _ in pieces[tail:]), scores)]
    state["model"]["vocab"] = specials + pieces
    tokenizer = Tokenizer.from_str(json.dumps(state))
    # XLM-R keeps <mask> as the last id, after every piece.
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tokenizer


def build_smoke_model(out: str | Path, family: str = "bert", *, texts: Iterable[str | Path] = (),
                      vocab_file: str | Path | None = None, tokenizer_json: str | Path | None = None,
                      vocab_size: int = 1000, hidden_size: int = 32, num_layers: int = 4, num_heads: int = 2,
                      intermediate_size: int = 64, max_position_embeddings: int = 130, head: str = "masked-lm",
                      num_labels: int = 3, seed: int = 0) -> Path:
    """Write a tiny randomly initialised model folder of `family` ("bert" or "xlmr") with a
    `head` ("base", "masked-lm", "sequence-classification", "token-classification",
    "question-answering")."""
    import torch
    from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                              AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              AutoTokenizer, BertConfig, XLMRobertaConfig)

    out = Path(out)
    if family == "bert":
        vocab = Path(vocab_file).read_text(encoding="utf-8").splitlines() if vocab_file else None
        write_bert_tokenizer(out, vocab=vocab, texts=texts, vocab_size=vocab_size)
    elif family == "xlmr":
        write_xlmr_tokenizer(out, tokenizer_json=tokenizer_json, texts=texts, vocab_size=vocab_size)
    else:
        raise ValueError(f"family must be 'bert' or 'xlmr', not {family!r}")
    tokenizer = AutoTokenizer.from_pretrained(out)
    if head == "question-answering":
        num_labels = 2  # start and end logits
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=intermediate_size, num_labels=num_labels,
                  pad_token_id=tokenizer.pad_token_id)
    if family == "bert":
        config = BertConfig(max_position_embeddings=max_position_embeddings, **common)
    else:
        config = XLMRobertaConfig(max_position_embeddings=max_position_embeddings + 2, bos_token_id=0,
                                  eos_token_id=2, type_vocab_size=1, **common)
    config.smoke_model = True  # carried by every model made from this one: reports say it is a smoke run
    if num_labels == 3:
        config.id2label = {0: "entailment", 1: "neutral", 2: "contradiction"}
        config.label2id = {v: k for k, v in config.id2label.items()}
    model_class = {
        "base": AutoModel, "masked-lm": AutoModelForMaskedLM,
        "sequence-classification": AutoModelForSequenceClassification,
        "token-classification": AutoModelForTokenClassification,
        "question-answering": AutoModelForQuestionAnswering,
    }[head]
    torch.manual_seed(seed)
    model = model_class.from_config(config)
    model.save_pretrained(out)
    (out / "README.md").write_text(SMOKE_CARD, encoding="utf-8")
    return out
