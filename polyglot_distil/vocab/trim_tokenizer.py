"""Trimming a tokenizer: the `tokenizers` model (WordPiece or SentencePiece Unigram) renumbered
to the kept ids, with its added tokens, post-processor and padding remapped, wrapped in the
source's `transformers` class with the source's settings; and the legacy `vocab.txt`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.models.loading import vocab_in_id_order
from polyglot_distil.vocab.select import id_map_for

SUPPORTED = {"WordPiece": "WordPiece (BERT family: bert, distilbert, ...)",
             "Unigram": "SentencePiece Unigram (XLM-R family)"}
_SOURCE_KWARGS = ("vocab_file", "tokenizer_file", "name_or_path", "vocab", "merges", "tokenizer_object",
                  "added_tokens_decoder")


def vocab_size(tokenizer) -> int:
    """Token ids the tokenizer can produce, added tokens included."""
    return tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def tokenizer_model_type(tokenizer, name: str) -> str:
    """"WordPiece" or "Unigram"; anything else is a UserError naming the supported types."""
    kind = type(tokenizer.backend_tokenizer.model).__name__
    if kind not in SUPPORTED:
        byte_level = " (GPT-2-style byte-level BPE)" if kind == "BPE" else ""
        raise UserError(f"cannot trim {name}: its tokenizer is {kind}{byte_level}; supported: "
                        f"{'; '.join(SUPPORTED.values())}")
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

