"""Trimming a tokenizer: the `tokenizers` model (WordPiece, SentencePiece Unigram, or BPE: byte-level
as GPT-2 / RoBERTa / Qwen, or SentencePiece-style with byte fallback as Gemma) renumbered to the
kept ids, with its added tokens, post-processor and padding remapped, wrapped in the source's
`transformers` class with the source's settings; and the legacy `vocab.txt` or `vocab.json` +
`merges.txt`.

BPE, exactly: a BPE tokenizer starts from characters (or bytes) and applies merges by rank, so a
kept vocabulary must be closed under merges. `close_under_merges` adds to the kept ids every part
of every merge that produces a kept token, recursively (intermediate tokens are never counted: a
word's final tokens are). The trimmed model keeps the merges whose two parts and result are kept,
in their order. On a word whose original tokens are all kept, every merge the original applied
produced an ancestor of a kept token, so it is kept; the original always applied the merge of
lowest rank among those that applied, which is then also the lowest among the kept ones: the
trimmed tokenizer applies the same merges in the same order and ends with the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.models.loading import vocab_in_id_order
from polyglot_distil.vocab.select import id_map_for

SUPPORTED = {"WordPiece": "WordPiece (BERT family: bert, distilbert, ...)",
             "Unigram": "SentencePiece Unigram (XLM-R, T5 / mT5 families)",
             "BPE": "BPE, byte-level (GPT-2, RoBERTa, Qwen) or SentencePiece-style with byte fallback (Gemma, mmBERT)"}
_SOURCE_KWARGS = ("vocab_file", "tokenizer_file", "name_or_path", "vocab", "merges", "tokenizer_object",
                  "added_tokens_decoder")


def vocab_size(tokenizer) -> int:
    """Token ids the tokenizer can produce, added tokens included."""
    return tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def tokenizer_model_type(tokenizer, name: str) -> str:
    """"WordPiece", "Unigram" or "BPE"; anything else is a UserError naming the supported types."""
    kind = type(tokenizer.backend_tokenizer.model).__name__
    if kind not in SUPPORTED:
        raise UserError(f"cannot trim {name}: its tokenizer is {kind}; supported: {'; '.join(SUPPORTED.values())}")
    if kind == "BPE" and json.loads(tokenizer.backend_tokenizer.model.__getstate__()).get("dropout"):
        raise UserError(f"cannot trim {name}: its BPE tokenizer has dropout (random merges), so no trim can "
                        "reproduce its tokens; save it without dropout first")
    return kind


BYTE_PIECES = tuple(f"<0x{byte:02X}>" for byte in range(256))


def byte_fallback_ids(tokenizer) -> list[int]:
    """Ids of the `<0x00>`..`<0xFF>` pieces of a byte-fallback model (SentencePiece Unigram or BPE
    with `byte_fallback`, or a vocabulary holding all 256): it spells every character it has no
    piece for with them, so a trim keeps them whatever the counts say. Empty otherwise."""
    backend = tokenizer.backend_tokenizer
    ids = sorted(i for i in (backend.token_to_id(piece) for piece in BYTE_PIECES) if i is not None)
    if len(ids) == len(BYTE_PIECES) or (ids and json.loads(backend.model.__getstate__()).get("byte_fallback")):
        return ids
    return []


def _has_byte_level(spec: dict | None) -> bool:
    """Whether a pre-tokenizer spec (or a Sequence of them) holds GPT-2's ByteLevel."""
    if not spec:
        return False
    if spec.get("type") == "Sequence":
        return any(_has_byte_level(inner) for inner in spec.get("pretokenizers", []))
    return spec.get("type") == "ByteLevel"


def byte_alphabet_ids(tokenizer) -> list[int]:
    """Ids of the 256 one-character tokens of a byte-level BPE (GPT-2's byte-to-unicode alphabet,
    `Ġ` for the space...): every text is spelt with them before merges, so a trim keeps them
    whatever the counts say. Empty for a tokenizer without the ByteLevel pre-tokenizer."""
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if not _has_byte_level(json.loads(backend.to_str()).get("pre_tokenizer")):
        return []
    return sorted(i for i in (backend.token_to_id(c) for c in pre_tokenizers.ByteLevel.alphabet()) if i is not None)


def bpe_merges(model: dict) -> list[tuple[str, str]]:
    """The merges of a BPE model spec, in rank order (stored as pairs, or as "a b" strings)."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def merge_result(model: dict, left: str, right: str) -> str:
    """The token a merge makes: the right part loses its continuing-subword prefix (`##`), as in
    `tokenizers` (`end_of_word_suffix` stays on the right part, so it needs nothing)."""
    prefix = model.get("continuing_subword_prefix") or ""
    return left + right[len(prefix):]


def close_under_merges(tokenizer, kept_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """For a BPE tokenizer: `kept_ids` (int64, ascending) with every part of every merge that makes
    a kept token, recursively, added; and how many were added. Unchanged for other models."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        return kept_ids, 0
    vocab = model["vocab"]
    parts_of: dict[int, list[int]] = {}
    for left, right in bpe_merges(model):
        made = vocab.get(merge_result(model, left, right))
        if made is None or left not in vocab or right not in vocab:
            raise UserError(f"the BPE merge {left!r} + {right!r} names a token its vocabulary lacks; "
                            "the tokenizer is damaged")
        parts_of.setdefault(made, []).extend((vocab[left], vocab[right]))
    kept = set(kept_ids.tolist())
    pending = [i for i in kept if i in parts_of]
    while pending:
        for part in parts_of.get(pending.pop(), ()):
            if part not in kept:
                kept.add(part)
                pending.append(part)
    closed = np.asarray(sorted(kept), dtype=np.int64)
    return closed, len(closed) - len(kept_ids)


def _remap_post_processor(spec: dict | None, id_map: np.ndarray) -> None:
    """Special-token ids are written into the post-processor: remap them in place."""
    if not spec:
        return
    kind = spec.get("type")
    if kind == "Sequence":
        for inner in spec.get("processors", []):
            _remap_post_processor(inner, id_map)
    elif kind == "TemplateProcessing":
        for token in spec.get("special_tokens", {}).values():
            token["ids"] = [int(id_map[i]) for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            token, old = spec[key]
            spec[key] = [token, int(id_map[old])]


def trim_backend(tokenizer, kept_ids: np.ndarray):
    """A `tokenizers.Tokenizer` holding only `kept_ids`, renumbered 0..V_new-1, with the added
    tokens, the post-processor and the padding id remapped, and truncation switched off."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    id_map = id_map_for(kept_ids, vocab_size(tokenizer))
    model = spec["model"]
    kept = kept_ids.tolist()
    if model["type"] == "WordPiece":
        token_of = {i: token for token, i in model["vocab"].items()}
        model["vocab"] = {token_of[i]: int(id_map[i]) for i in kept if i in token_of}
    elif model["type"] == "Unigram":
        pieces = model["vocab"]
        model["vocab"] = [pieces[i] for i in kept if i < len(pieces)]
        if model.get("unk_id") is not None:
            model["unk_id"] = int(id_map[model["unk_id"]])
    elif model["type"] == "BPE":  # kept_ids closed under merges (close_under_merges)
        token_of = {i: token for token, i in model["vocab"].items()}
        model["vocab"] = {token_of[i]: int(id_map[i]) for i in kept if i in token_of}
        kept_tokens = model["vocab"]
        model["merges"] = [merge for merge, (left, right) in zip(model["merges"], bpe_merges(model))
                           if left in kept_tokens and right in kept_tokens
                           and merge_result(model, left, right) in kept_tokens]
    else:
        raise UserError(f"cannot trim a {model['type']} tokenizer; supported: {'; '.join(SUPPORTED.values())}")
    spec["added_tokens"] = [dict(t, id=int(id_map[t["id"]])) for t in spec.get("added_tokens", [])
                            if id_map[t["id"]] >= 0]
    _remap_post_processor(spec.get("post_processor"), id_map)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = int(id_map[spec["padding"]["pad_id"]])
    spec["truncation"] = None
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def trim_tokenizer(tokenizer, kept_ids: np.ndarray):
    """The source's `transformers` tokenizer class around the trimmed backend, with the source's
    settings (casing, special tokens, max length), ready for `save_pretrained`."""
    backend = trim_backend(tokenizer, kept_ids)
    id_map = id_map_for(kept_ids, vocab_size(tokenizer))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _SOURCE_KWARGS}
    added = tokenizer.init_kwargs.get("added_tokens_decoder") or {}
    kwargs["added_tokens_decoder"] = {int(id_map[i]): t for i, t in added.items() if id_map[int(i)] >= 0}
    trimmed = type(tokenizer)(tokenizer_object=backend, **kwargs)
    vocab = vocab_in_id_order(tokenizer)
    if vocab_in_id_order(trimmed) != [vocab[i] for i in kept_ids.tolist()]:
        raise RuntimeError("the rebuilt tokenizer's vocabulary is not the kept vocabulary in order")
    return trimmed


def write_vocab_txt(tokenizer, path: Path) -> None:
    """The legacy WordPiece vocabulary: one token per line, line number = id."""
    path.write_text("\n".join(vocab_in_id_order(tokenizer)) + "\n", encoding="utf-8")


def write_vocab_and_merges(tokenizer, folder: Path) -> list[str]:
    """The legacy BPE files GPT-2-era tools read: `vocab.json` ({token: id} of the BPE model) and
    `merges.txt` (a version line, then one "left right" merge per line, by rank). Returns their names."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in bpe_merges(model)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["vocab.json", "merges.txt"]

