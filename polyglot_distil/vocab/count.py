"""Count how often each token of a model's vocabulary occurs in each language's corpus.

    polyglot-distil count --model bert-base-multilingual-cased \
        --lang en=corpora/en/sample.txt --lang fr=corpora/fr/sample.txt --out counts.parquet
    polyglot-distil count ... --shard 3/8 --out part3.parquet     # one of 8 processes
    polyglot-distil merge part*.parquet --out counts.parquet

Output: one Parquet table, one row per (lang, token) seen, with columns
`lang` (string), `token_id` (int64), `token` (string), `count` (int64: occurrences) and
`lines` (int64: lines the token occurs in). The file's metadata (key `polyglot_distil`) holds
the tokenizer's name, vocabulary size and fingerprint, and per-language totals: lines, tokens,
characters, `unk` occurrences and undecodable bytes replaced.

Speed: lines are tokenised in batches with `encode_batch_fast` (all cores, GIL released) on a
worker thread while the main thread reads the next batch and folds the previous one into numpy
arrays: `bincount` over ids for `count`, and over the distinct (line, id) pairs of the batch
for `lines` (ids sorted within each line, duplicates masked). Memory is one batch at a time.

WordPiece tokenizers (BERT's normaliser and pre-tokenizer, mBERT) encode a batch's lines joined
with ' [SEP] ' into chunks of JOIN_CHARS characters: a few hundred long inputs instead of
thousands of short ones, faster than encoding line by line, and exact, since BERT's
pre-tokenizer splits at the spaces and the special token is matched before normalisation; each
token's line is the number of separator ids before it in its chunk. A line that holds the
separator's text itself is encoded alone, and a chunk whose separators do not number its lines
less one is encoded again line by line. Other tokenizers (XLM-R's Unigram: joining is slower
there) encode line by line.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from polyglot_distil.data.corpus import MAX_REPLACED_SHARE, Caps, ReadStats, Source, group_lang_specs, iter_language, \
    parse_shard
from polyglot_distil.errors import UserError
from polyglot_distil.data.tokenization import untruncated
from polyglot_distil.fingerprints import hashed_lines, tokenizer_fingerprint
from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order
from polyglot_distil.options import APPEND, FLAG, NO_PROGRESS, POSITIONAL, READS, SEED, WRITES, like, setting
from polyglot_distil.outputs import atomic_file, check_writable
from polyglot_distil.progress import progress
from polyglot_distil.tables import text_table

METADATA_KEY = b"polyglot_distil"
FORMAT_VERSION = 1
COLUMNS = ("lang", "token_id", "token", "count", "lines")
GC_EVERY_BATCHES = 32


@dataclass
class LanguageTotals:
    """Per-language totals stored in the Parquet metadata."""

    lines: int = 0
    tokens: int = 0
    chars: int = 0
    unk: int = 0
    replaced_bytes: int = 0
    distinct: int = 0
    seconds: float = 0.0
    sources: list[str] = field(default_factory=list)
    text_sha256: str = ""  # of the lines counted (each with a newline); "" in a merge and in older files


@dataclass
class Counts:
    """A counts table in memory: dense per-language arrays indexed by token id."""

    tokenizer: str
    fingerprint: str
    vocab: list[str]
    unk_id: int | None
    occurrences: dict[str, np.ndarray] = field(default_factory=dict)  # lang -> int64[V]
    line_counts: dict[str, np.ndarray] = field(default_factory=dict)  # lang -> int64[V]
    totals: dict[str, LanguageTotals] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def languages(self) -> list[str]:
        return list(self.occurrences)


# ---------------------------------------------------------------------------------------------
# Counting


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _fold(encodings, occurrences: np.ndarray, line_counts: np.ndarray) -> int:
    """Add one batch of encodings, one per line, to the running arrays; return its number of tokens."""
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    if total == 0:
        return 0
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
    return _fold_ids(flat, np.repeat(np.arange(len(ids), dtype=np.int64), lengths), occurrences, line_counts)


def _fold_ids(flat: np.ndarray, line_of: np.ndarray, occurrences: np.ndarray, line_counts: np.ndarray) -> int:
    """Add token ids `flat` and their lines `line_of` (non-decreasing) to the running arrays."""
    if len(flat) == 0:
        return 0
    occurrences += np.bincount(flat, minlength=len(occurrences))
    # Distinct (line, id) pairs: line numbers are non-decreasing, so a stable sort of
    # (line << 32 | id) only sorts ids within each line (timsort runs), then drop repeats.
    keys = np.sort((line_of << 32) | flat, kind="stable")
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    line_counts += np.bincount(keys[first] & 0xFFFFFFFF, minlength=len(line_counts))
    return len(flat)


JOIN_CHARS = 4096  # characters per chunk of joined lines (WordPiece): a few KB


def joined_separator(backend) -> tuple[str, int] | None:
    """(text, id) of the token that lines can be joined with, exactly, for `count_lines`: "[SEP]"
    for a WordPiece model behind BERT's pre-tokenizer (it splits at whitespace, so ' [SEP] '
    between lines changes no line's tokens) and BERT's per-character normaliser or none, where
    "[SEP]" is a special token matched on the raw text. None otherwise: count line by line."""
    from tokenizers import models, normalizers, pre_tokenizers

    if not isinstance(backend.model, models.WordPiece) or not isinstance(backend.pre_tokenizer,
                                                                         pre_tokenizers.BertPreTokenizer):
        return None
    if backend.normalizer is not None and not isinstance(backend.normalizer, normalizers.BertNormalizer):
        return None
    for token_id, token in backend.get_added_tokens_decoder().items():
        if token.content == "[SEP]" and token.special and not token.normalized:
            return token.content, int(token_id)
    return None


def _join(batch: list[str], separator: str, chunk_chars: int) -> list[tuple[str, int, int, bool]]:
    """The batch's lines as chunks (text, first line, lines, joined?): runs of lines joined with
    ' separator ' up to `chunk_chars` characters; a line holding the separator's text is a chunk
    of its own, not joined."""
    chunks: list[tuple[str, int, int, bool]] = []
    joiner = f" {separator} "
    start, size = 0, 0

    def flush(end: int) -> None:
        if end > start:
            chunks.append((joiner.join(batch[start:end]), start, end - start, True))

    for number, line in enumerate(batch):
        if separator in line:
            flush(number)
            chunks.append((line, number, 1, False))
            start, size = number + 1, 0
            continue
        size += len(line) + len(joiner)
        if size >= chunk_chars:
            flush(number + 1)
            start, size = number + 1, 0
    flush(len(batch))
    return chunks


def _fold_joined(backend, encodings, chunks, batch: list[str], separator_id: int, occurrences: np.ndarray,
                 line_counts: np.ndarray) -> int:
    """Add the encodings of `_join`'s chunks to the running arrays: a token's line is its chunk's
    first line plus the separator ids before it in the chunk; separators are not counted. A joined
    chunk whose separators are not its lines less one is encoded again line by line."""
    ids = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    first = np.fromiter((c[1] for c in chunks), dtype=np.int64, count=len(chunks))
    lines = np.fromiter((c[2] for c in chunks), dtype=np.int64, count=len(chunks))
    joined = np.fromiter((c[3] for c in chunks), dtype=bool, count=len(chunks))
    chunk_of = np.repeat(np.arange(len(chunks), dtype=np.int64), lengths)
    is_separator = (flat == separator_id) & joined[chunk_of]
    before = np.concatenate(([0], np.cumsum(is_separator)))  # separators before each token, and in all
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    wrong = joined & (before[offsets[1:]] - before[offsets[:-1]] != lines - 1)
    if wrong.any():  # not seen: lines with the separator's text are chunks of their own
        singles = [chunk for chunk, bad in zip(chunks, wrong) if not bad]
        for chunk in itertools.compress(chunks, wrong):
            singles.extend((batch[n], n, 1, False) for n in range(chunk[1], chunk[1] + chunk[2]))
        singles.sort(key=lambda chunk: chunk[1])
        again = backend.encode_batch_fast([chunk[0] for chunk in singles], add_special_tokens=False)
        return _fold_joined(backend, again, singles, batch, separator_id, occurrences, line_counts)
    line_of = first[chunk_of] + before[1:] - before[offsets[:-1]][chunk_of]
    keep = ~is_separator
    return _fold_ids(flat[keep], line_of[keep], occurrences, line_counts)


def count_lines(backend, lines: Iterable[str], vocab_size: int, batch_lines: int = 8192,
                progress=None, join: bool | None = None, chunk_chars: int = JOIN_CHARS
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Token occurrences and line counts over `lines`, both int64[vocab_size], and the number of
    tokens. `backend` is a `tokenizers.Tokenizer` (truncation and padding off). `join`: encode
    lines joined into chunks of `chunk_chars` characters (None: where `joined_separator` says it
    is exact; False: line by line); the counts are the same."""
    occurrences = np.zeros(vocab_size, dtype=np.int64)
    line_counts = np.zeros(vocab_size, dtype=np.int64)
    separator = joined_separator(backend) if join is not False else None
    if join and separator is None:
        raise ValueError("this tokenizer's lines cannot be joined exactly (not BERT's WordPiece with [SEP])")
    tokens = 0
    # Each batch makes thousands of short-lived lists (encodings, their ids) and no reference
    # cycles; left on, the cyclic garbage collector rescans them over and over (~10% of the time).
    # It runs every GC_EVERY_BATCHES batches instead, for whatever cycles a source's reader makes.
    collecting = gc.isenabled()
    gc.disable()
    try:
        tokens = _count_batches(backend, lines, batch_lines, occurrences, line_counts, progress, separator,
                                chunk_chars)
    finally:
        if collecting:
            gc.enable()
    return occurrences, line_counts, tokens


def _count_batches(backend, lines, batch_lines, occurrences, line_counts, progress, separator=None,
                   chunk_chars: int = JOIN_CHARS) -> int:
    tokens = 0

    def fold(pending) -> int:
        future, batch, chunks = pending
        if chunks is None:
            return _fold(future.result(), occurrences, line_counts)
        return _fold_joined(backend, future.result(), chunks, batch, separator[1], occurrences, line_counts)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None  # (future, lines, chunks): the batch being encoded while the next one is read
        for number, batch in enumerate(_batches(lines, batch_lines), 1):
            if number % GC_EVERY_BATCHES == 0:
                gc.collect()
            chunks = _join(batch, separator[0], chunk_chars) if separator is not None else None
            texts = batch if chunks is None else [chunk[0] for chunk in chunks]
            submitted = (pool.submit(backend.encode_batch_fast, texts, add_special_tokens=False), batch, chunks)
            if pending is not None:
                tokens += fold(pending)
                if progress is not None:
                    progress(len(pending[1]), tokens)
            pending = submitted
        if pending is not None:
            tokens += fold(pending)
            if progress is not None:
                progress(len(pending[1]), tokens)
    return tokens


def _progress_total(sources: list[Source], caps: Caps, shard: tuple[int, int]) -> tuple[float | None, bool]:
    """(total, in bytes?) for a language's progress: the line cap when there is one, else the
    bytes of its files when all are plain uncompressed text (a share of them for a shard), else
    unknown."""
    if caps.max_lines is not None and shard == (0, 1):
        return caps.max_lines, False
    files = [Path(s.path) for s in sources if s.kind == "text" and not s.path.endswith((".gz", ".bz2", ".xz"))]
    if caps.capped or len(files) != len(sources) or not all(f.is_file() for f in files):
        return None, False
    return sum(f.stat().st_size for f in files) / shard[1], True


def _unk_id(tokenizer) -> int | None:
    """The unknown token's id: the wrapper's, else the model's (WordPiece, WordLevel and BPE name
    the token; Unigram keeps only its id, which `tokenizers` shows in the model's serialisation
    alone: a bare XLM-R-style tokenizer.json names no unknown token to the wrapper); None if none."""
    if tokenizer.unk_token_id is not None:
        return int(tokenizer.unk_token_id)
    model = tokenizer.backend_tokenizer.model
    unk = getattr(model, "unk_token", None)
    if unk is not None:
        return tokenizer.backend_tokenizer.token_to_id(unk)
    unk_id = json.loads(model.__getstate__()).get("unk_id")
    return int(unk_id) if unk_id is not None else None


def count_corpora(tokenizer_name: str, languages: dict[str, list[Source]], caps: Caps | None = None,
                  shard: tuple[int, int] = (0, 1), batch_lines: int = 8192, show_progress: bool | None = None,
                  trust_remote_code: bool = False, tokenizer=None, allow_replacements: bool = False,
                  join: bool | None = None) -> Counts:
    """Count every language's corpus with the tokenizer `tokenizer_name` (or an already loaded
    `tokenizer`). Raises `UserError` for an empty corpus, one whose lines give no token, and one
    that is not UTF-8 text (`corpus.iter_language`'s check; the undecodable bytes are allowed with
    `allow_replacements`).
    `join`: as `count_lines` (None: lines joined into chunks where that is exact)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_name, trust_remote_code)
    vocab = vocab_in_id_order(tokenizer)
    result = Counts(tokenizer=str(tokenizer_name), fingerprint=tokenizer_fingerprint(tokenizer, vocab), vocab=vocab,
                    unk_id=_unk_id(tokenizer))
    result.extra = {"shard": f"{shard[0]}/{shard[1]}", "caps": asdict(caps or Caps())}
    for lang, sources in languages.items():
        stats = ReadStats()
        total, in_bytes = _progress_total(sources, caps or Caps(), shard)
        bar = progress(total=total, desc=f"count {lang}", unit=" bytes" if in_bytes else " lines",
                       show=show_progress)
        start, read = time.perf_counter(), [0]

        def on_batch(n_lines: int, n_tokens: int) -> None:
            bar.update(read[0] - bar.n if in_bytes else n_lines)
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{n_tokens / elapsed / 1e3:,.0f}k tokens/s", refresh=False)

        def measured(lines: Iterator[str]) -> Iterator[str]:
            for line in lines:
                read[0] += len(line.encode("utf-8")) + 1
                yield line

        with untruncated(tokenizer) as backend:
            lines = iter_language(sources, caps, shard, stats, allow_replacements, name=lang,
                                  hint=", or pass --allow-replacements")
            if in_bytes:
                lines = measured(lines)
            text = hashlib.sha256()
            occurrences, line_counts, tokens = count_lines(backend, hashed_lines(lines, text), len(vocab),
                                                           batch_lines, on_batch, join)
        bar.close()
        where = ", ".join(str(s) for s in sources)
        if stats.lines == 0 and shard == (0, 1):
            raise UserError(f"empty corpus for language {lang!r}: no non-blank lines in {where}")
        if tokens == 0 and stats.lines > 0:
            raise UserError(f"language {lang!r}: the {stats.lines:,} lines of {where} give no token (only spaces or "
                            "invisible characters?); give real text")
        result.occurrences[lang] = occurrences
        result.line_counts[lang] = line_counts
        result.totals[lang] = LanguageTotals(
            lines=stats.lines, tokens=tokens, chars=stats.chars,
            unk=int(occurrences[result.unk_id]) if result.unk_id is not None else 0,
            replaced_bytes=stats.replaced_bytes, distinct=int(np.count_nonzero(occurrences)),
            seconds=round(time.perf_counter() - start, 3), sources=stats.sources,
            text_sha256=text.hexdigest() if stats.lines else "")
    return result


# ---------------------------------------------------------------------------------------------
# Parquet I/O


def _metadata(counts: Counts) -> dict:
    return {
        "format": FORMAT_VERSION,
        "tokenizer": counts.tokenizer,
        "tokenizer_fingerprint": counts.fingerprint,
        "vocab_size": counts.vocab_size,
        "unk_id": counts.unk_id,
        "languages": {lang: asdict(t) for lang, t in counts.totals.items()},
        **counts.extra,
    }


def to_table(counts: Counts):
    """The Parquet table: one row per (lang, token) with a non-zero count."""
    import pyarrow as pa

    langs, ids, occ, lines = [], [], [], []
    for lang in counts.languages:
        seen = np.flatnonzero(counts.occurrences[lang])
        langs.append(np.full(len(seen), lang, dtype=object))
        ids.append(seen)
        occ.append(counts.occurrences[lang][seen])
        lines.append(counts.line_counts[lang][seen])
    token_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    vocab = np.asarray(counts.vocab, dtype=object)
    table = pa.table({
        "lang": pa.array(np.concatenate(langs) if langs else [], type=pa.string()),
        "token_id": pa.array(token_ids, type=pa.int64()),
        "token": pa.array(vocab[token_ids] if len(token_ids) else [], type=pa.string()),
        "count": pa.array(np.concatenate(occ) if occ else [], type=pa.int64()),
        "lines": pa.array(np.concatenate(lines) if lines else [], type=pa.int64()),
    })
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(_metadata(counts)).encode()})


def write_counts(counts: Counts, out: str | Path, overwrite: bool = False) -> Path:
    import pyarrow.parquet as pq

    with atomic_file(out, overwrite) as tmp:
        pq.write_table(to_table(counts), tmp)
    return Path(out)


def read_counts(path: str | Path) -> Counts:
    """Read a counts file written by `count` or `merge` back into dense arrays."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"counts file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise UserError(f"cannot read {path} as Parquet: {exc}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if raw is None or missing:
        raise UserError(f"{path} is not a polyglot-distil counts file (written by 'polyglot-distil count')")
    meta = json.loads(raw)
    vocab_size = int(meta["vocab_size"])
    vocab = [""] * vocab_size
    lang_col = table.column("lang").to_numpy(zero_copy_only=False)
    id_col = table.column("token_id").to_numpy()
    count_col = table.column("count").to_numpy()
    lines_col = table.column("lines").to_numpy()
    bad = np.flatnonzero((count_col < 0) | (lines_col < 0) | (lines_col > count_col) | (id_col < 0)
                         | (id_col >= vocab_size))
    if len(bad):
        row = int(bad[0])
        raise UserError(f"{path}: row {row:,} ({lang_col[row]}, token id {id_col[row]}) has count {count_col[row]} and "
                        f"lines {lines_col[row]}: counts must be >= 0, lines <= count and ids within the "
                        f"{vocab_size:,}-token vocabulary; count the corpus again")
    for token_id, token in zip(id_col.tolist(), table.column("token").to_pylist()):
        vocab[token_id] = token
    result = Counts(tokenizer=meta["tokenizer"], fingerprint=meta["tokenizer_fingerprint"], vocab=vocab,
                    unk_id=meta.get("unk_id"))
    result.extra = {k: v for k, v in meta.items()
                    if k not in ("format", "tokenizer", "tokenizer_fingerprint", "vocab_size", "unk_id", "languages")}
    for lang, totals in meta["languages"].items():
        rows = lang_col == lang
        occurrences = np.zeros(vocab_size, dtype=np.int64)
        line_counts = np.zeros(vocab_size, dtype=np.int64)
        occurrences[id_col[rows]] = count_col[rows]
        line_counts[id_col[rows]] = lines_col[rows]
        result.occurrences[lang] = occurrences
        result.line_counts[lang] = line_counts
        result.totals[lang] = LanguageTotals(**totals)
    return result


def check_shards(parts: list[Counts], names: list[str], allow_partial: bool = False) -> None:
    """Shards of one count must each come once, and all of them (I/N for I = 0..N-1), unless
    `allow_partial`; counts of other corpora (shard 0/1, or merged) add freely."""
    seen: dict[str, str] = {}
    texts: dict[tuple, tuple[str, list[str]]] = {}  # the same lines read under other paths (a copy)
    totals: dict[int, set[int]] = {}
    for part, name in zip(parts, names):
        for unit in counted_units(part):  # a merged part: each of its parts
            what = json.loads(unit)
            if unit in seen:
                raise UserError(f"{name} and {seen[unit]} both hold the same shard {what['shard']} of the {what['lang']} "
                                f"counts ({', '.join(what['sources']) or 'the same sources'}); merging both would count "
                                "those lines twice: pass each count once")
            seen[unit] = name
            if "text" in what:
                text = (what["tokenizer"], what["lang"], what["text"])
                if text in texts:
                    other, sources = texts[text]
                    raise UserError(f"{name} and {other} counted the same {what['lang']} text (the same lines, read "
                                    f"from {', '.join(what['sources'])} and from {', '.join(sources)}); merging both "
                                    "would count those lines twice: pass each count once")
                texts[text] = (name, what["sources"])
        shard = part.extra.get("shard") or "0/1"
        if shard == "merged" or "/" not in shard:
            continue
        index, count = (int(x) for x in shard.split("/"))
        if count > 1:
            totals.setdefault(count, set()).add(index)
    for count, indices in totals.items():
        missing = sorted(set(range(count)) - indices)
        if missing and not allow_partial:
            raise UserError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{count}' for i in missing)} "
                            f"missing from the merge; add {'them' if len(missing) > 1 else 'it'}, or pass "
                            "--allow-partial to merge a part on purpose")


def counted_units(counts: Counts) -> list[str]:
    """What `counts` counted, one entry per language and shard (JSON: tokenizer, language, shard,
    caps, sources); a merged file lists its parts' entries, so that a merge sees the same lines
    come twice however the files were combined."""
    if "units" in counts.extra:
        return list(counts.extra["units"])
    shard, caps = counts.extra.get("shard") or "0/1", counts.extra.get("caps")
    return [json.dumps({"tokenizer": counts.fingerprint, "lang": lang, "shard": shard, "caps": caps,
                        "sources": list(total.sources), **({"text": total.text_sha256} if total.text_sha256 else {})},
                       sort_keys=True) for lang, total in counts.totals.items()]


def merge(parts: list[Counts]) -> Counts:
    """Add counts made with the same tokenizer (shards of one corpus, or other corpora)."""
    first = parts[0]
    merged = Counts(tokenizer=first.tokenizer, fingerprint=first.fingerprint, vocab=list(first.vocab),
                    unk_id=first.unk_id)
    merged.extra = {"shard": "merged", "caps": first.extra.get("caps"),
                    "merged_from": [p.extra.get("shard") for p in parts],
                    "units": [unit for part in parts for unit in counted_units(part)]}
    for part in parts:
        if part.fingerprint != first.fingerprint:
            raise UserError(f"cannot merge counts made with different tokenizers: {first.tokenizer} and {part.tokenizer}")
        for i, token in enumerate(part.vocab):  # token strings of ids only one part saw
            if token and not merged.vocab[i]:
                merged.vocab[i] = token
        for lang in part.languages:
            if lang not in merged.occurrences:
                merged.occurrences[lang] = np.zeros(first.vocab_size, dtype=np.int64)
                merged.line_counts[lang] = np.zeros(first.vocab_size, dtype=np.int64)
                merged.totals[lang] = LanguageTotals()
            merged.occurrences[lang] += part.occurrences[lang]
            merged.line_counts[lang] += part.line_counts[lang]
            total, add = merged.totals[lang], part.totals[lang]
            for name in ("lines", "tokens", "chars", "unk", "replaced_bytes", "seconds"):
                setattr(total, name, getattr(total, name) + getattr(add, name))
            total.sources = total.sources or add.sources
    for lang, total in merged.totals.items():
        total.distinct = int(np.count_nonzero(merged.occurrences[lang]))
        total.seconds = round(total.seconds, 3)
    return merged


# ---------------------------------------------------------------------------------------------
# Summary


def summary_table(counts: Counts) -> str:
    """A one-screen table of per-language totals."""
    header = ("lang", "lines", "tokens", "chars", "distinct", "unk", "unk %", "replaced", "tokens/s")
    rows = [header]
    for lang, t in counts.totals.items():
        rate = f"{t.tokens / t.seconds:,.0f}" if t.seconds else "-"
        unk_share = f"{100 * t.unk / t.tokens:.3f}" if t.tokens else "-"
        rows.append((lang, f"{t.lines:,}", f"{t.tokens:,}", f"{t.chars:,}", f"{t.distinct:,}", f"{t.unk:,}",
                     unk_share, f"{t.replaced_bytes:,}", rate))
    return text_table(rows, rule=True)


# ---------------------------------------------------------------------------------------------
# Command line


def shard_path(out: str | Path, shard: tuple[int, int]) -> Path:
    """`counts.parquet`, shard (2, 8) -> `counts.shard-2-of-8.parquet`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{shard[0]}-of-{shard[1]}{out.suffix}")


@dataclass(kw_only=True)
class CountSettings:
    """`count`'s settings (the command line's options, a `run` config's `count:` section)."""

    model: str = setting(role=READS, renamed_from=("--tokenizer",),
                         help="whose tokenizer counts: hub name, model folder or tokenizer.json")
    lang: list[str] = setting(kind=APPEND, role=READS, metavar="LANG=SOURCE",
                              help="a language and one of its sources; repeat for more sources or languages")
    out: str = setting(role=WRITES, help="the Parquet file to write")
    max_lines: int | None = setting(None, help="cap on lines per language (deterministic sample)")
    max_bytes: int | None = setting(None, help="cap on UTF-8 bytes per language (deterministic sample)")
    min_chars: int = setting(0, help="skip lines shorter than this (Geotrend: 6)")
    sample: str = setting("random", choices=("random", "head"),
                          help="how caps choose lines: seeded random sample over the whole corpus, or the first lines")
    seed: int = like(SEED)
    shard: str | None = setting(None, help="I/N: count only shard I of N of every language (merge the parts after); "
                                "'auto' takes I/N from torchrun / accelerate launch / a SLURM job array and writes "
                                "OUT with '.shard-I-of-N' before its suffix")
    batch_lines: int = setting(8192, advanced=True, help="lines per encode_batch call")
    allow_replacements: bool = setting(False, kind=FLAG,
                                       help=f"count a source although over {MAX_REPLACED_SHARE:.0%} of its bytes are "
                                            "not UTF-8 (they become U+FFFD)")
    overwrite: bool = setting(False, kind=FLAG, help="replace an existing output file")
    trust_remote_code: bool = setting(False, kind=FLAG, help="allow the tokenizer's own code to run")
    no_progress: bool = like(NO_PROGRESS)

    def __post_init__(self):
        if self.batch_lines < 1:
            raise UserError("--batch-lines must be at least 1")


@dataclass(kw_only=True)
class MergeSettings:
    """`merge`'s settings."""

    parts: list[str] = setting(kind=POSITIONAL, role=READS, nargs="+", help="counts files written by 'count'")
    out: str = setting(role=WRITES, help="the merged Parquet file to write")
    allow_partial: bool = setting(False, kind=FLAG, help="merge although shards of a count are missing")
    overwrite: bool = setting(False, kind=FLAG, help="replace an existing output file")


def run_count(settings: CountSettings) -> dict:
    """The `count` stage: count, write the table; returns the report, its summary table in "lines"."""
    shard = parse_shard(settings.shard)
    out = str(shard_path(settings.out, shard)) if settings.shard == "auto" and shard[1] > 1 else settings.out
    check_writable(out, settings.overwrite, kind="file")  # before the (possibly long) work
    languages = group_lang_specs(settings.lang)
    caps = Caps(max_lines=settings.max_lines, max_bytes=settings.max_bytes, min_chars=settings.min_chars,
                sample=settings.sample, seed=settings.seed)
    counts = count_corpora(settings.model, languages, caps, shard, settings.batch_lines,
                           show_progress=False if settings.no_progress else None,
                           trust_remote_code=settings.trust_remote_code,
                           allow_replacements=settings.allow_replacements)
    write_counts(counts, out, settings.overwrite)
    rows = sum(int(np.count_nonzero(c)) for c in counts.occurrences.values())
    return {"out": str(out), "rows": rows, "totals": {lang: asdict(t) for lang, t in counts.totals.items()},
            "lines": [*summary_table(counts).splitlines(), f"wrote {out} ({rows:,} rows)"]}


def run_merge(settings: MergeSettings) -> dict:
    """The `merge` stage: add counts files into one; returns the report, its summary table in "lines"."""
    check_writable(settings.out, settings.overwrite, kind="file")
    parts = [read_counts(p) for p in settings.parts]
    check_shards(parts, [str(p) for p in settings.parts], settings.allow_partial)
    merged = merge(parts)
    write_counts(merged, settings.out, settings.overwrite)
    return {"out": str(settings.out), "parts": len(settings.parts),
            "totals": {lang: asdict(t) for lang, t in merged.totals.items()},
            "lines": [*summary_table(merged).splitlines(), f"wrote {settings.out} from {len(settings.parts)} parts"]}
