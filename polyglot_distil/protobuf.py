"""Protocol-buffer messages read and written at the wire level, so that SentencePiece model files
can be read and trimmed without the `protobuf` package (which `sentencepiece`'s Python classes
need): varints and a message's fields in order."""

from __future__ import annotations


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fields(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, the whole field's bytes, its payload) in order."""
    found, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = read_varint(data, pos)
            payload = b""
        elif wire == 2:
            length, pos = read_varint(data, pos)
            payload, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            payload = b""
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        found.append((tag >> 3, data[start:pos], payload))
    return found
