"""Corpus input: where each language's text comes from, read as a stream of lines.

A language maps to one or more *sources*. A source is written as one string, `PATH` or
`KIND:PATH`, optionally followed by `?key=value&key=value` options:

    corpora/fr/sample.txt                      plain text, one line per sentence or document
    wiki.fr.txt.gz                             .gz, .bz2 and .xz are read transparently
    ../shared/data/xnli/dev-fr.tsv             TSV; default columns premise,hypothesis
    data.tsv?columns=0,2                       TSV columns by 0-based index (no header)
    data.tsv?columns=text                      TSV column by header name
    data.parquet?column=text                   Parquet, one text column (default `text`)
    data.jsonl?column=text                     JSON lines (also .jsonl.gz)
    hf:wikimedia/wikipedia?config=20231101.fr  a Hugging Face dataset, streamed
    hf:statmt/cc100?config=fr&split=train&column=text
    corpora/fr/manifest.yaml                   the real sources a manifest names

Every text is split into lines; blank lines (and lines shorter than `min_chars`) are skipped.
A language's lines are numbered across its sources in order; that number decides the line's
shard (`index % N`) and, with caps, its sampling priority, so `--shard I/N` runs partition
exactly the lines one unsharded run sees. Without caps, a hub dataset is split between the
shards by the `datasets` library instead, so that each shard streams only its own part. Undecodable bytes are replaced and counted.

Usage:
    texts = iter_language(parse_sources(["corpora/fr/sample.txt"]), Caps(max_lines=1000))
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import heapq
import json
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator
from urllib.parse import parse_qsl

import numpy as np

from polyglot_distil.data.languages import warn_if_unknown
from polyglot_distil.errors import UserError

TEXT_KINDS = ("text", "tsv", "parquet", "jsonl", "hf", "manifest")
OPTIONS = {
    "text": set(),
    "tsv": {"columns", "names"},
    "parquet": {"column"},
    "jsonl": {"column"},
    "hf": {"config", "split", "column"},
    "manifest": set(),
}
XNLI_NAMES = ("premise", "hypothesis", "label")

# The text check every command that reads text shares (`check_raw`, `iter_language`):
MAX_REPLACED_SHARE = 0.01  # undecodable bytes per character above which a source is not UTF-8 text
MAX_NUL_SHARE = 0.01  # NUL bytes per byte above which a file is UTF-16/32 or binary, not UTF-8 text
MAX_LINE_BYTES = 4 << 20  # a longer line is a file without line breaks: the tokenizer's memory would explode
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True)
class Source:
    """One place text comes from. `path` is a file path, or a dataset name for `hf`."""

    kind: str
    path: str
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def __str__(self) -> str:
        opts = "&".join(f"{k}={v}" for k, v in self.options)
        prefix = "hf:" if self.kind == "hf" else ""
        return f"{prefix}{self.path}" + (f"?{opts}" if opts else "")


@dataclass
class Caps:
    """Per-language limits. With `max_lines`/`max_bytes` a deterministic sample is taken:
    `sample="random"` keeps the lines of lowest seeded priority that fit (spread over the whole
    corpus, memory bounded by the cap); `sample="head"` keeps the first lines (stops reading)."""

    max_lines: int | None = None
    max_bytes: int | None = None
    min_chars: int = 0
    sample: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sample not in ("random", "head"):
            raise UserError(f"sample must be 'random' or 'head', not {self.sample!r}")
        for name in ("max_lines", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be a positive number, not {value}")

    @property
    def capped(self) -> bool:
        return self.max_lines is not None or self.max_bytes is not None


@dataclass
class ReadStats:
    """What reading one language produced (after sampling and sharding)."""

    lines: int = 0
    chars: int = 0
    replaced_bytes: int = 0
    sources: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Parsing source strings


def _guess_kind(path: str) -> str:
    name = path.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".yaml", ".yml")):
        return "manifest"
    return "text"


def parse_source(spec: str, base_dir: str | os.PathLike | None = None) -> Source:
    """Parse one source string (see the module docstring). Local files must exist."""
    spec = spec.strip()
    if not spec:
        raise UserError("empty source: expected a file path or hf:DATASET")
    path, _, query = spec.partition("?")
    kind = None
    if ":" in path and path.split(":", 1)[0] in TEXT_KINDS:
        kind, path = path.split(":", 1)
    kind = kind or _guess_kind(path)
    options = tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else ()
    unknown = {k for k, _ in options} - OPTIONS[kind]
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[kind])) or "none"
        raise UserError(f"source {spec!r}: unknown option {sorted(unknown)[0]!r} for {kind} (allowed: {allowed})")
    if kind != "hf":
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        if not os.path.exists(path):
            raise UserError(f"source file not found: {path}")
        if os.path.isdir(path):
            raise UserError(f"source {path} is a folder; name a file (or a manifest.yaml)")
        if not os.access(path, os.R_OK):
            raise UserError(f"source file is not readable: {path}")
    elif not path:
        raise UserError(f"source {spec!r}: hf: needs a dataset name, e.g. hf:wikimedia/wikipedia?config=20231101.fr")
    return Source(kind, path, options)


def parse_sources(specs: Iterable[str], base_dir: str | os.PathLike | None = None) -> list[Source]:
    """Parse source strings, expanding manifests into the sources they name."""
    sources: list[Source] = []
    for spec in specs:
        source = parse_source(spec, base_dir)
        if source.kind == "manifest":
            sources.extend(read_manifest(source.path)["sources"])
        else:
            sources.append(source)
    return sources


def parse_lang_spec(spec: str) -> tuple[str, Source]:
    """Parse `LANG=SOURCE` as given to `--lang`."""
    lang, sep, source = spec.partition("=")
    lang = lang.strip()
    if not sep or not lang or not source.strip():
        raise UserError(f"--lang {spec!r}: expected LANG=SOURCE, e.g. fr=corpora/fr/sample.txt")
    if not all(c.isalnum() or c in "-_" for c in lang):
        raise UserError(f"--lang {spec!r}: language code {lang!r} may only hold letters, digits, '-' and '_'")
    return lang, parse_source(source)


def group_lang_specs(specs: Iterable[str]) -> dict[str, list[Source]]:
    """`["en=a.txt", "fr=b.txt", "en=c.txt"]` -> `{"en": [a, c], "fr": [b]}` (first-seen order)."""
    by_lang: dict[str, list[Source]] = {}
    for spec in specs:
        lang, source = parse_lang_spec(spec)
        warn_if_unknown(lang, f"--lang {spec}")  # a typo ('ed' for 'de') is seen here, not at trim
        expanded = read_manifest(source.path)["sources"] if source.kind == "manifest" else [source]
        by_lang.setdefault(lang, []).extend(expanded)
    if not by_lang:
        raise UserError("no language given: pass --lang LANG=SOURCE at least once")
    return by_lang


def read_manifest(path: str | os.PathLike) -> dict:
    """A language's manifest (`corpora/LANG/manifest.yaml`): `sources` (the real corpora, parsed
    into `Source`s) and `sample` (the bundled offline sample, as a path)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"manifest {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list) or not data["sources"]:
        raise UserError(f"manifest {path}: expected a mapping with a non-empty 'sources' list")
    sources = [parse_source(str(s), base_dir=path.parent) for s in data["sources"]]
    if any(s.kind == "manifest" for s in sources):
        raise UserError(f"manifest {path}: a manifest may not name another manifest")
    sample = data.get("sample")
    return {
        "language": data.get("language"),
        "sources": sources,
        "sample": str(path.parent / sample) if sample else None,
    }


# ---------------------------------------------------------------------------------------------
# Reading


class Decoder:
    """UTF-8 decoding that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self) -> None:
        self.replaced = 0
        self._name = f"polyglot_distil_count_{id(self)}"
        codecs.register_error(self._name, self._on_error)

    def _on_error(self, err: UnicodeDecodeError) -> tuple[str, int]:
        self.replaced += err.end - err.start
        return "\ufffd", err.end

    def __call__(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors=self._name)


def _open_binary(path: str) -> IO[bytes]:
    for suffix, opener in _COMPRESSED.items():
        if path.lower().endswith(suffix):
            return opener(path, "rb")
    return open(path, "rb")


def _read_chunks(path: str, decode: Decoder, chunk_bytes: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of lines (without their newlines) of a possibly compressed text file, about
    `chunk_bytes` at a time: one UTF-8 decode per chunk, per line only where a chunk holds
    undecodable bytes (so they are replaced and counted)."""
    number = 0
    try:
        with _open_binary(path) as handle:
            while raw_lines := handle.readlines(chunk_bytes):
                check_raw(path, raw_lines, number)
                number += len(raw_lines)
                try:
                    text = b"".join(raw_lines).decode("utf-8")
                except UnicodeDecodeError:
                    yield [decode(raw.rstrip(b"\r\n")) for raw in raw_lines]
                    continue
                lines = text.split("\n")
                if text.endswith("\n"):
                    lines.pop()
                yield [line.rstrip("\r") for line in lines] if "\r" in text else lines
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def check_raw(path: str, raw_lines: list[bytes], before: int = 0) -> None:
    """Refuse, with one line, bytes that are not lines of UTF-8 text: NUL bytes over MAX_NUL_SHARE
    (UTF-16 or UTF-32 without a byte-order mark would otherwise be read as text with a NUL after
    every letter), and a line over MAX_LINE_BYTES (a file with no line breaks). `before`: lines
    read before these."""
    for number, raw in enumerate(raw_lines, before + 1):
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{path}: line {number:,} is {len(raw) / 1e6:,.1f} MB without a line break (over "
                            f"{MAX_LINE_BYTES / 1e6:.0f} MB): not text in lines; split it into sentences or paragraphs, "
                            "one per line")
    size = sum(map(len, raw_lines))
    nul = sum(raw.count(0) for raw in raw_lines)
    if nul > MAX_NUL_SHARE * size:
        guess = "UTF-16" if nul < 0.6 * size else "UTF-32 or binary"
        raise UserError(f"{path}: {nul:,} NUL bytes in {size:,} bytes: not UTF-8 text ({guess}?); convert it to "
                        f"UTF-8, e.g. iconv -f {'UTF-16LE' if guess == 'UTF-16' else 'UTF-32LE'} -t UTF-8")


def replaced_check(where: str, replaced: int, chars: int, final: bool, hint: str = "") -> None:
    """Refuse text with more undecodable bytes than MAX_REPLACED_SHARE of its characters (judged
    from 10,000 characters on, and at the end): a binary file or another encoding would
    otherwise be read as text without a word."""
    if (final or chars >= 10_000) and replaced > MAX_REPLACED_SHARE * max(chars, 1):
        raise UserError(f"{where}: {replaced:,} undecodable bytes in the first {chars:,} characters (over "
                        f"{MAX_REPLACED_SHARE:.0%}): not UTF-8 text (a binary file, or another encoding?); convert "
                        f"it to UTF-8{hint}")


def read_lines(path: str, decode: Decoder) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for a possibly compressed text file."""
    number = 0
    for chunk in _read_chunks(path, decode):
        for number, line in enumerate(chunk, number + 1):
            yield number, line


def _text_lines(source: Source, decode: Decoder) -> Iterator[str]:
    for chunk in _read_chunks(source.path, decode):
        yield from chunk


def _tsv_lines(source: Source, decode: Decoder) -> Iterator[str]:
    rows = read_lines(source.path, decode)
    first = next(rows, None)
    if first is None:
        return
    header = first[1].split("\t")
    wanted = (source.option("columns") or "premise,hypothesis").split(",")
    wanted = [w.strip() for w in wanted if w.strip()]
    names = source.option("names")
    if all(w.isdigit() for w in wanted):
        has_header, indices = False, [int(w) for w in wanted]
    elif all(w in header for w in wanted):
        has_header, indices = True, [header.index(w) for w in wanted]
    else:
        # A header-less file: names come from ?names=, or XNLI's layout for 3-column files.
        layout = names.split(",") if names else (list(XNLI_NAMES) if len(header) == 3 else [])
        missing = [w for w in wanted if w not in layout]
        if missing:
            shown = ", ".join(header if not names else layout)
            raise UserError(f"{source.path}: no column {missing[0]!r} (columns: {shown}); "
                            "use ?columns=NAME,... or 0-based ?columns=0,1")
        has_header, indices = False, [layout.index(w) for w in wanted]
    needed = max(indices) + 1
    lines = rows if has_header else _chain_first(first, rows)
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) < needed:
            if not line.strip():
                continue
            raise UserError(f"{source.path}:{number}: {len(fields)} tab-separated fields, need at least {needed}")
        for i in indices:
            yield fields[i]


def _chain_first(first, rest):
    yield first
    yield from rest


def _jsonl_lines(source: Source, decode: Decoder) -> Iterator[str]:
    column = source.option("column", "text")
    for number, line in read_lines(source.path, decode):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source.path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or column not in record:
            raise UserError(f"{source.path}:{number}: no field {column!r}; use ?column=NAME")
        if record[column] is not None:
            yield str(record[column])


def _parquet_lines(source: Source, decode: Decoder) -> Iterator[str]:
    import pyarrow.parquet as pq

    column = source.option("column", "text")
    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(f"cannot read {source.path} as Parquet: {exc}") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise UserError(f"{source.path}: no column {column!r} (columns: {', '.join(names)}); use ?column=NAME")
    for batch in parquet.iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _hf_lines(source: Source, decode: Decoder, shard: tuple[int, int] | None = None) -> Iterator[str]:
    """A hub dataset's text column, streamed; with `shard`, only that shard's part of the stream
    (`split_dataset_by_node`: whole files per shard where they divide evenly)."""
    import datasets

    column = source.option("column", "text")
    config, split = source.option("config"), source.option("split", "train")
    try:
        stream = datasets.load_dataset(source.path, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types: network, missing config, missing split
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if looks_offline(exc):
            reason = f"the Hugging Face hub is unreachable ({reason}); use a local file instead"
        raise UserError(f"cannot load dataset {source}: {reason}") from None
    if shard is not None and shard[1] > 1:
        from datasets.distributed import split_dataset_by_node

        stream = split_dataset_by_node(stream, rank=shard[0], world_size=shard[1])
    for record in stream:
        if column not in record:
            raise UserError(f"dataset {source}: no column {column!r} (columns: {', '.join(record)}); use ?column=NAME")
        if record[column] is not None:
            yield str(record[column])


def looks_offline(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("offline", "connect", "resolve", "network", "timed out", "max retries"))


_READERS = {"text": _text_lines, "tsv": _tsv_lines, "jsonl": _jsonl_lines, "parquet": _parquet_lines, "hf": _hf_lines}


def iter_source(source: Source, decode: Decoder | None = None, shard: tuple[int, int] | None = None) -> Iterator[str]:
    """The non-blank lines of one source, in order (a text holding newlines gives several).
    `shard` splits a hub dataset's stream between processes (other kinds ignore it)."""
    decode = decode or Decoder()
    texts = _hf_lines(source, decode, shard) if source.kind == "hf" else _READERS[source.kind](source, decode)
    for text in texts:
        for line in text.split("\n") if "\n" in text else (text,):
            line = line.rstrip("\r")
            if line.strip():
                yield line


def _numbered_lines(sources: list[Source], caps: Caps, decode: Decoder,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[int | None, str]]:
    """(index across the sources, line). Without caps, a sharded run streams only its own part of
    a hub dataset, rather than the whole stream on every shard; those lines come with index None
    (they are this shard's already). With caps the sample needs every line's index, so each
    shard reads everything."""
    index = 0
    split_hub = shard[1] > 1 and not caps.capped
    for source in sources:
        presplit = split_hub and source.kind == "hf"
        for line in iter_source(source, decode, shard if presplit else None):
            if len(line) < caps.min_chars:
                continue
            if presplit:
                yield None, line
            else:
                yield index, line
                index += 1


def _priorities(seed: int) -> Iterator[float]:
    """A deterministic stream of uniform priorities, one per line index."""
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.random(65536).tolist()


def _sample(numbered: Iterator[tuple[int, str]], caps: Caps) -> Iterator[tuple[int, str]]:
    """Apply the caps. Random sampling keeps the lowest-priority lines that fit under both caps
    (a bottom-k sample: memory is bounded by the cap) and yields them in corpus order."""
    max_lines = caps.max_lines or float("inf")
    max_bytes = caps.max_bytes or float("inf")
    if caps.sample == "head":
        kept_bytes = 0
        for kept, (index, line) in enumerate(numbered):
            kept_bytes += len(line.encode("utf-8"))
            if kept >= max_lines or kept_bytes > max_bytes:
                return
            yield index, line
        return
    heap: list[tuple[float, int, str, int]] = []  # (-priority, index, line, size): max-heap on priority
    kept_bytes = 0
    for (index, line), priority in zip(numbered, _priorities(caps.seed)):
        size = len(line.encode("utf-8"))
        heapq.heappush(heap, (-priority, index, line, size))
        kept_bytes += size
        while heap and (len(heap) > max_lines or kept_bytes > max_bytes):
            kept_bytes -= heapq.heappop(heap)[3]
    for _, index, line, _ in sorted(heap, key=lambda item: item[1]):
        yield index, line


def _checked(numbered: Iterator[tuple[int | None, str]], decode: Decoder, where: str,
             hint: str) -> Iterator[tuple[int | None, str]]:
    chars = 0
    for count, (index, line) in enumerate(numbered):
        chars += len(line)
        if count % 256 == 0:
            replaced_check(where, decode.replaced, chars, False, hint)
        yield index, line
    replaced_check(where, decode.replaced, chars, True, hint)


def iter_language(
    sources: list[Source],
    caps: Caps | None = None,
    shard: tuple[int, int] = (0, 1),
    stats: ReadStats | None = None,
    allow_replacements: bool = False,
    name: str | None = None,
    hint: str = "",
) -> Iterator[str]:
    """Stream one language's lines: all sources in order, sampled by `caps`, then the lines of
    shard `shard = (I, N)` (those whose index % N == I). `stats` is filled in as lines go by.
    Text that is not UTF-8 is refused (`check_raw`, and `replaced_check` unless
    `allow_replacements`); `name` (e.g. `en`) and `hint` go into that line."""
    caps = caps or Caps()
    stats = stats if stats is not None else ReadStats()
    stats.sources = [str(s) for s in sources]
    shard_index, shard_count = shard
    decode = Decoder()
    numbered = _numbered_lines(sources, caps, decode, shard)
    if not allow_replacements:
        where = ", ".join(str(s) for s in sources)
        numbered = _checked(numbered, decode, f"{name}={where}" if name else where, hint)
    if caps.capped:
        numbered = _sample(numbered, caps)
    for index, line in numbered:
        if index is not None and index % shard_count != shard_index:
            continue
        stats.lines += 1
        stats.chars += len(line)
        stats.replaced_bytes = decode.replaced
        yield line
    stats.replaced_bytes = decode.replaced


def parse_shard(spec: str | None) -> tuple[int, int]:
    """`"2/8"` -> `(2, 8)`; shards are numbered 0..N-1. `"auto"` takes the process's rank and
    world size from the environment that `torchrun` and `accelerate launch` set (RANK,
    WORLD_SIZE), or a job array's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT."""
    if not spec:
        return (0, 1)
    if spec == "auto":
        for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")):
            if rank_var in os.environ and size_var in os.environ:
                spec = f"{os.environ[rank_var]}/{os.environ[size_var]}"
                break
        else:
            return (0, 1)
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard {spec!r}: expected I/N, e.g. 0/4, or auto") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {spec!r}: need 0 <= I < N")
    return index, count
