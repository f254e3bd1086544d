"""A SentencePiece model file (XLM-R's `sentencepiece.bpe.model`) read at the wire level, and the
XLM-R tokenizer built from it for a folder that has no `tokenizer.json`.

transformers converts that file only with the `protobuf` package (without it, it falls back to
`tiktoken` and fails with "`tiktoken` is required"), and its conversion drops byte fallback; this
reads the file with `polyglot_distil.protobuf` and keeps it:

    spm = read_sentencepiece(path.read_bytes())   # pieces, scores, types, byte_fallback, ...
    tokenizer = xlmr_tokenizer_from_sentencepiece(folder)   # None: not an XLM-R-style folder

transformers 5 also rebuilds an XLM-R tokenizer from `tokenizer.json`'s vocabulary alone, dropping
its byte fallback: `restore_byte_fallback` puts it back as the file says.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from polyglot_distil.protobuf import fields, read_varint

SPM_FILE = "sentencepiece.bpe.model"
# SentencePiece.Type (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1  # TrainerSpec.ModelType
FAIRSEQ_HEAD = ["<unk>", "<s>", "</s>"]  # XLM-R's file; its Hugging Face ids are 3, 0, 2
XLMR_TOKENIZER_CLASSES = ("XLMRobertaTokenizer", "XLMRobertaTokenizerFast")
XLMR_MODEL_TYPES = ("xlm-roberta", "xlm-roberta-xl")
_BYTE_FALLBACK_ON = re.compile(rb'"byte_fallback"\s*:\s*true')
_NOT_SETTINGS = ("tokenizer_class", "auto_map", "added_tokens_decoder", "name_or_path", "vocab_file",
                 "tokenizer_file", "vocab", "tokenizer_object")


@dataclass
class SentencePieceModel:
    """What a tokenizer needs from a ModelProto (proto defaults where a field is absent)."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True


def _varint_value(raw: bytes) -> int:
    """The value of a varint field, from the field's bytes (tag included)."""
    _, pos = read_varint(raw, 0)
    return read_varint(raw, pos)[0]


def read_sentencepiece(data: bytes) -> SentencePieceModel:
    """ModelProto: 1 = pieces {1: piece, 2: score (float), 3: type}, 2 = trainer_spec {3: model_type,
    35: byte_fallback}, 3 = normalizer_spec {2: precompiled_charsmap, 3: add_dummy_prefix}."""
    model = SentencePieceModel(pieces=[], scores=[], types=[])
    for number, raw, payload in fields(data):
        if number == 1:
            piece, score, kind = "", 0.0, NORMAL
            for n, r, p in fields(payload):
                if n == 1:
                    piece = p.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", r[-4:])[0]
                elif n == 3:
                    kind = _varint_value(r)
            model.pieces.append(piece)
            model.scores.append(score)
            model.types.append(kind)
        elif number == 2:
            for n, r, _ in fields(payload):
                if n == 3:
                    model.model_type = _varint_value(r)
                elif n == 35:
                    model.byte_fallback = bool(_varint_value(r))
        elif number == 3:
            for n, r, p in fields(payload):
                if n == 2:
                    model.precompiled_charsmap = p
                elif n == 3:
                    model.add_dummy_prefix = bool(_varint_value(r))
    return model


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _is_xlmr_folder(folder: Path, settings: dict) -> bool:
    """XLM-R's tokenizer by the folder's tokenizer_config.json, or (when that names no class) by its
    config.json's model type."""
    named = settings.get("tokenizer_class")
    if named:
        return named in XLMR_TOKENIZER_CLASSES
    return _read_json(folder / "config.json").get("model_type") in XLMR_MODEL_TYPES


def xlmr_tokenizer_from_sentencepiece(folder: str | Path):
    """The fast XLM-R tokenizer of a local `folder` that holds `sentencepiece.bpe.model` but no
    `tokenizer.json`, built as transformers' XLM-R conversion builds it (`<s> <pad> </s> <unk>`,
    the pieces after the file's first three, `<mask>` last; the file's normaliser; `▁` word
    starts) and with the file's byte fallback. None when the folder is not such a folder (or its
    file is not an XLM-R-style Unigram model): then transformers loads it."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / "tokenizer.json").is_file() or not (folder / SPM_FILE).is_file():
        return None
    config = _read_json(folder / "tokenizer_config.json")
    if not _is_xlmr_folder(folder, config):
        return None
    spm = read_sentencepiece((folder / SPM_FILE).read_bytes())
    if spm.pieces[:3] != FAIRSEQ_HEAD or spm.model_type != UNIGRAM:
        return None
    from tokenizers import AddedToken, Tokenizer, decoders
    from transformers import XLMRobertaTokenizer

    settings = {k: (v.get("content") if isinstance(v, dict) and "content" in v else v)
                for k, v in config.items() if k not in _NOT_SETTINGS}
    settings.setdefault("add_prefix_space", spm.add_dummy_prefix)
    specials = {key: str(settings.get(f"{key}_token", default)) for key, default in
                (("bos", "<s>"), ("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>"), ("mask", "<mask>"))}
    vocab = [(specials[key], 0.0) for key in ("bos", "pad", "eos", "unk")]
    vocab += list(zip(spm.pieces[3:], spm.scores[3:]))
    vocab.append((specials["mask"], 0.0))
    charsmap = spm.precompiled_charsmap or None
    tokenizer = XLMRobertaTokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap, **settings)
    if spm.byte_fallback:  # pieces <0x00>..<0xFF> spell what no piece covers, and decode to bytes
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        spec["model"]["byte_fallback"] = True
        backend = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
        backend.decoder = decoders.Sequence([decoders.ByteFallback(), tokenizer.backend_tokenizer.decoder])
        tokenizer = _rewrap(tokenizer, backend, settings)
    # the file's user-defined and control pieces are never split, as SentencePiece treats them
    fixed = [AddedToken(piece, normalized=False, special=kind == CONTROL)
             for piece, kind in zip(spm.pieces[3:], spm.types[3:]) if kind in (CONTROL, USER_DEFINED)]
    if fixed:
        tokenizer.add_tokens(fixed)
    tokenizer.name_or_path = str(folder)
    return tokenizer


def _rewrap(tokenizer, backend, settings: dict):
    """`tokenizer`'s class around another `tokenizers` backend, with `settings`."""
    settings = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    rewrapped = type(tokenizer)(tokenizer_object=backend, **settings)
    rewrapped.name_or_path = tokenizer.name_or_path
    return rewrapped


def _tokenizer_json(name_or_path: str | Path) -> Path | None:
    """The tokenizer.json of a local folder, or of a hub name in the local cache."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "tokenizer.json")
    except Exception:  # an odd name or a broken cache: nothing to restore from
        return None
    return Path(cached) if isinstance(cached, str) else None


def restore_byte_fallback(tokenizer, name_or_path: str | Path):
    """`tokenizer` as loaded by transformers from `name_or_path` (a folder, or a cached hub name),
    with the byte fallback (and ByteFallback decoder) of its `tokenizer.json` that transformers 5
    drops when it rebuilds a SentencePiece-class tokenizer (XLM-R's) from the vocabulary: without
    it, a character with no piece becomes `<unk>` instead of its `<0xNN>` bytes. Unchanged otherwise."""
    path = _tokenizer_json(name_or_path)
    if path is None:
        return tokenizer
    data = path.read_bytes()
    if not _BYTE_FALLBACK_ON.search(data):
        return tokenizer
    backend = tokenizer.backend_tokenizer
    loaded = json.loads(backend.to_str())
    saved = json.loads(data)
    if loaded["model"].get("byte_fallback") or not saved.get("model", {}).get("byte_fallback") or \
            loaded["model"].get("type") != saved["model"].get("type"):
        return tokenizer
    from tokenizers import Tokenizer

    loaded["model"]["byte_fallback"] = True
    loaded["decoder"] = saved.get("decoder", loaded.get("decoder"))
    return _rewrap(tokenizer, Tokenizer.from_str(json.dumps(loaded, ensure_ascii=False)), tokenizer.init_kwargs)
