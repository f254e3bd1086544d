"""The legacy SentencePiece file of a tokenizer, found beside the source and trimmed to the kept
pieces: XLM-R's `sentencepiece.bpe.model` (fairseq's id offset), and files whose piece i is the
tokenizer's id i: Gemma's / Llama's `tokenizer.model` (SentencePiece BPE) and T5's / mT5's
`spiece.model` (Unigram).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyglot_distil.models.sentencepiece_model import BYTE, SPM_FILE, read_sentencepiece
from polyglot_distil.protobuf import fields, varint

__all__ = ["SPM_FILE", "SENTENCEPIECE_FILES", "find_sentencepiece", "sentencepiece_byte_ids", "trim_sentencepiece"]
SENTENCEPIECE_FILES = (SPM_FILE, "tokenizer.model", "spiece.model")


def find_sentencepiece(name_or_path: str) -> Path | None:
    """The source's SentencePiece file (SENTENCEPIECE_FILES), in its folder or the hub cache, if
    it has one."""
    folder = Path(name_or_path)
    for name in SENTENCEPIECE_FILES:
        if folder.is_dir():
            if (folder / name).is_file():
                return folder / name
            continue
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name_or_path), name)
        except Exception:  # an odd name or a broken cache: the legacy file is optional
            return None
        if isinstance(cached, str):
            return Path(cached)
    return None


# SentencePiece's ModelProto, read and written at the wire level (the `sentencepiece` package
# needs `protobuf` for its Python classes): field 1 = repeated pieces {1: piece, 2: score,
# 3: type}, field 2 = trainer_spec {4: vocab_size}; every other field is copied byte for byte.


def _matches(names: list[str], hf_vocab: list[str]) -> bool:
    """Whether the file's pieces are the tokenizer's, fairseq-style (see trim_sentencepiece)."""
    return names[:3] == ["<unk>", "<s>", "</s>"] and len(hf_vocab) == len(names) + 2 and all(
        hf_vocab[h] == names[h - 1] for h in range(4, len(names) + 1))


def _same_ids(names: list[str], hf_vocab: list[str]) -> bool:
    """Whether piece i of the file is the tokenizer's id i (the tokenizer may add tokens after)."""
    return 0 < len(names) <= len(hf_vocab) and names == hf_vocab[:len(names)]


def _hf_ids_of_pieces(names: list[str], hf_vocab: list[str]) -> list[int] | None:
    """The Hugging Face id of each piece of the file, or None when the file does not match."""
    if _matches(names, hf_vocab):
        return [3, 0, 2] + list(range(4, len(names) + 1))
    if _same_ids(names, hf_vocab):
        return list(range(len(names)))
    return None


def sentencepiece_byte_ids(data: bytes, hf_vocab: list[str]) -> list[int]:
    """The Hugging Face ids of the file's byte pieces (`<0x00>`..`<0xFF>`, type BYTE): a trim keeps
    them always, as a byte-fallback model spells every character it has no piece for with them.
    Empty when the file has none or does not match the tokenizer."""
    spm = read_sentencepiece(data)
    hf_ids = _hf_ids_of_pieces(spm.pieces, hf_vocab)
    if hf_ids is None:
        return []
    return [h for h, kind in zip(hf_ids, spm.types) if kind == BYTE]


def trim_sentencepiece(data: bytes, kept_ids: np.ndarray, hf_vocab: list[str]) -> bytes | None:
    """The SentencePiece model trimmed to `kept_ids` (Hugging Face ids, ascending). Fairseq-style
    (XLM-R): spm `<unk> <s> </s>` (ids 0-2) stay, and Hugging Face id h >= 4 is spm id h - 1 before
    and after. Same ids (Gemma, T5): the pieces at the kept ids, so id i stays piece i. None when
    the file does not match the tokenizer (then no legacy file is written)."""
    top = fields(data)
    pieces = [payload for number, _, payload in top if number == 1]
    names = [next((p for n, _, p in fields(piece) if n == 1), b"").decode("utf-8") for piece in pieces]
    if _matches(names, hf_vocab):
        new_pieces = pieces[:3] + [pieces[h - 1] for h in kept_ids.tolist() if 4 <= h <= len(pieces)]
    elif _same_ids(names, hf_vocab):
        new_pieces = [pieces[h] for h in kept_ids.tolist() if h < len(pieces)]
    else:
        return None
    out = bytearray()
    pieces_written = False
    for number, raw, payload in top:
        if number == 1:
            if not pieces_written:
                for piece in new_pieces:
                    out += varint(1 << 3 | 2) + varint(len(piece)) + piece
                pieces_written = True
        elif number == 2:  # trainer_spec: its vocab_size (field 4, varint) follows the new size
            spec = b"".join(varint(4 << 3) + varint(len(new_pieces)) if n == 4 else r
                            for n, r, _ in fields(payload))
            out += varint(2 << 3 | 2) + varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)

