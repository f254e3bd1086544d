"""The legacy SentencePiece file (`sentencepiece.bpe.model`) of an XLM-R-family tokenizer,
found beside the source and trimmed to the kept pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPM_FILE = "sentencepiece.bpe.model"


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


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _proto_fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, the whole field's bytes, its payload) in order."""
    fields, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
            payload = b""
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            payload, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            payload = b""
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((tag >> 3, data[start:pos], payload))
    return fields


def trim_sentencepiece(data: bytes, kept_ids: np.ndarray, hf_vocab: list[str]) -> bytes | None:
    """A trimmed fairseq-style SentencePiece model for XLM-R: spm `<unk> <s> </s>` (ids 0-2)
    stay, and Hugging Face id h >= 4 is spm id h - 1 before and after. None when the file
    does not match the tokenizer (then no legacy file is written)."""
    fields = _proto_fields(data)
    pieces = [payload for number, _, payload in fields if number == 1]
    names = [next((p for n, _, p in _proto_fields(piece) if n == 1), b"").decode("utf-8") for piece in pieces]
    if names[:3] != ["<unk>", "<s>", "</s>"] or len(hf_vocab) != len(pieces) + 2 or any(
            hf_vocab[h] != names[h - 1] for h in range(4, len(pieces) + 1)):
        return None
    kept = [pieces[h - 1] for h in kept_ids.tolist() if 4 <= h <= len(pieces)]
    new_pieces = pieces[:3] + kept
    out = bytearray()
    pieces_written = False
    for number, raw, payload in fields:
        if number == 1:
            if not pieces_written:
                for piece in new_pieces:
                    out += _varint(1 << 3 | 2) + _varint(len(piece)) + piece
                pieces_written = True
        elif number == 2:  # trainer_spec: its vocab_size (field 4, varint) follows the new size
            spec = b"".join(_varint(4 << 3) + _varint(len(new_pieces)) if n == 4 else r
                            for n, r, _ in _proto_fields(payload))
            out += _varint(2 << 3 | 2) + _varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)

