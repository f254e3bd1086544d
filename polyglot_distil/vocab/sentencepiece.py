"""The legacy SentencePiece file (`sentencepiece.bpe.model`) of an XLM-R-family tokenizer,
found beside the source and trimmed to the kept pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyglot_distil.models.sentencepiece_model import BYTE, SPM_FILE, read_sentencepiece
from polyglot_distil.protobuf import fields, varint

__all__ = ["SPM_FILE", "find_sentencepiece", "sentencepiece_byte_ids", "trim_sentencepiece"]


def find_sentencepiece(name_or_path: str) -> Path | None:
    """The source's `sentencepiece.bpe.model`, in its folder or the hub cache, if it has one."""
    folder = Path(name_or_path)
    if folder.is_dir():
        return folder / SPM_FILE if (folder / SPM_FILE).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), SPM_FILE)
    except Exception:  # an odd name or a broken cache: the legacy file is optional
        return None
    return Path(cached) if isinstance(cached, str) else None


# SentencePiece's ModelProto, read and written at the wire level (the `sentencepiece` package
# needs `protobuf` for its Python classes): field 1 = repeated pieces {1: piece, 2: score,
# 3: type}, field 2 = trainer_spec {4: vocab_size}; every other field is copied byte for byte.


def _matches(names: list[str], hf_vocab: list[str]) -> bool:
    """Whether the file's pieces are the tokenizer's, fairseq-style (see trim_sentencepiece)."""
    return names[:3] == ["<unk>", "<s>", "</s>"] and len(hf_vocab) == len(names) + 2 and all(
        hf_vocab[h] == names[h - 1] for h in range(4, len(names) + 1))


def sentencepiece_byte_ids(data: bytes, hf_vocab: list[str]) -> list[int]:
    """The Hugging Face ids of the file's byte pieces (`<0x00>`..`<0xFF>`, type BYTE): a trim keeps
    them always, as a byte-fallback model spells every character it has no piece for with them.
    Empty when the file has none or does not match the tokenizer."""
    spm = read_sentencepiece(data)
    if not _matches(spm.pieces, hf_vocab):
        return []
    return [h for h in range(4, len(spm.pieces) + 1) if spm.types[h - 1] == BYTE]


def trim_sentencepiece(data: bytes, kept_ids: np.ndarray, hf_vocab: list[str]) -> bytes | None:
    """A trimmed fairseq-style SentencePiece model for XLM-R: spm `<unk> <s> </s>` (ids 0-2)
    stay, and Hugging Face id h >= 4 is spm id h - 1 before and after. None when the file
    does not match the tokenizer (then no legacy file is written)."""
    top = fields(data)
    pieces = [payload for number, _, payload in top if number == 1]
    names = [next((p for n, _, p in fields(piece) if n == 1), b"").decode("utf-8") for piece in pieces]
    if not _matches(names, hf_vocab):
        return None
    kept = [pieces[h - 1] for h in kept_ids.tolist() if 4 <= h <= len(pieces)]
    new_pieces = pieces[:3] + kept
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

