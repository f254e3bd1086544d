"""NLI data (premise, hypothesis, label) from local files or Hugging Face datasets.

One reader for every stage that needs labelled pairs: evaluation (XNLI per language) and
fine-tuning / task distillation (MultiNLI or XNLI-en for training). A source is one string:

    ../shared/data/xnli/test-fr.tsv            header-less TSV: premise<TAB>hypothesis<TAB>label
    train.tsv.gz                               .gz/.bz2/.xz are read transparently
    nli.jsonl                                  JSON lines with premise, hypothesis, label fields
    hf:facebook/xnli?config=fr&split=test      a Hugging Face dataset (labels 0/1/2)
    hf:nyu-mll/multi_nli?split=train           rows labelled -1 (no gold label) are skipped

Labels are `LABELS = ("entailment", "neutral", "contradiction")`, ids 0/1/2 (XNLI's and
MultiNLI's order). Files use the names (XTREME's `contradictory` is read as contradiction;
JSONL may also give the id); a dataset's integer labels are mapped through its `ClassLabel`
names when it has them. A row with the wrong number of columns or an unknown label stops
the read with the file and line.

Usage:
    data = read_nli("../shared/data/xnli/dev-en.tsv")       # -> NLIData
    test_fr = xnli_split("../shared/data/xnli", "test", "fr")  # or xnli_split(None, ...): the hub
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from polyglot_distil.data.corpus import Decoder, looks_offline, read_lines
from polyglot_distil.errors import UserError

LABELS = ("entailment", "neutral", "contradiction")
LABEL_IDS = {name: i for i, name in enumerate(LABELS)}
_ALIASES = {"contradictory": "contradiction"}  # XTREME's MultiNLI train file spells it so
NO_GOLD_LABEL = -1  # MultiNLI's rows whose annotators did not agree

XNLI_DATASET = "facebook/xnli"
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
# Local files are named like XTREME's (`dev`), the hub dataset's splits like `datasets` (`validation`).
_LOCAL_SPLIT = {"validation": "dev"}
_HUB_SPLIT = {"dev": "validation"}


@dataclass
class NLIData:
    """Labelled pairs in source order. `labels` are ids into `LABELS`; `sources[i]` and
    `lines[i]` say where pair i came from (1-based line of a file, 0-based row of a dataset)."""

    premises: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64[N]
    sources: list[str] = field(default_factory=list)
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64[N]
    skipped: int = 0  # rows without a gold label, left out

    def __len__(self) -> int:
        return len(self.premises)

    def where(self, i: int) -> str:
        return f"{self.sources[i]}:{self.lines[i]}"

    def label_counts(self) -> np.ndarray:
        """int64[3]: pairs per label, in `LABELS` order."""
        return np.bincount(self.labels, minlength=len(LABELS))

    def select(self, indices) -> "NLIData":
        """The pairs at `indices` (e.g. `range(100)` for the first 100), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return NLIData([self.premises[i] for i in indices], [self.hypotheses[i] for i in indices],
                       self.labels[indices], [self.sources[i] for i in indices], self.lines[indices])

    @staticmethod
    def concat(parts: list["NLIData"]) -> "NLIData":
        """Several sources read one after the other (e.g. two training files)."""
        return NLIData(
            [p for part in parts for p in part.premises], [h for part in parts for h in part.hypotheses],
            np.concatenate([part.labels for part in parts] or [np.zeros(0, np.int64)]),
            [s for part in parts for s in part.sources],
            np.concatenate([part.lines for part in parts] or [np.zeros(0, np.int64)]),
            sum(part.skipped for part in parts))


class _Builder:
    """Collects rows; `source` is shared by every row of one read (one string object, not N)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.premises: list[str] = []
        self.hypotheses: list[str] = []
        self.labels: list[int] = []
        self.lines: list[int] = []
        self.skipped = 0

    def add(self, premise: str, hypothesis: str, label: int, line: int) -> None:
        self.premises.append(premise)
        self.hypotheses.append(hypothesis)
        self.labels.append(label)
        self.lines.append(line)

    def build(self) -> NLIData:
        if not self.premises:
            raise UserError(f"{self.source}: no labelled pairs in it")
        return NLIData(self.premises, self.hypotheses, np.asarray(self.labels, dtype=np.int64),
                       [self.source] * len(self.premises), np.asarray(self.lines, dtype=np.int64), self.skipped)


def label_id(name: str) -> int | None:
    """The id of a label name (case and surrounding spaces ignored), None if it is not one."""
    name = name.strip().lower()
    name = _ALIASES.get(name, name)
    return LABEL_IDS.get(name)


def _unknown_label(where: str, value) -> UserError:
    return UserError(f"{where}: unknown label {value!r} (expected {', '.join(LABELS)})")


def _read_tsv(path: str) -> NLIData:
    rows = _Builder(path)
    for number, line in read_lines(path, Decoder()):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise UserError(f"{path}:{number}: {len(fields)} tab-separated columns, expected 3 "
                            "(premise, hypothesis, label)")
        premise, hypothesis, label = fields
        if number == 1 and [f.strip().lower() for f in fields] == ["premise", "hypothesis", "label"]:
            continue  # an optional header row
        lid = label_id(label)
        if lid is None:
            raise _unknown_label(f"{path}:{number}", label.strip())
        rows.add(premise, hypothesis, lid, number)
    return rows.build()


def _read_jsonl(path: str) -> NLIData:
    rows = _Builder(path)
    for number, line in read_lines(path, Decoder()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        missing = [k for k in ("premise", "hypothesis", "label") if not isinstance(record, dict) or k not in record]
        if missing:
            raise UserError(f"{path}:{number}: no field {missing[0]!r} (each line needs premise, hypothesis, label)")
        label = record["label"]
        if label == NO_GOLD_LABEL:
            rows.skipped += 1
            continue
        if isinstance(label, str):
            lid = label_id(label)
        else:  # an id, in XNLI order
            lid = label if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(LABELS) else None
        if lid is None:
            raise _unknown_label(f"{path}:{number}", label)
        rows.add(str(record["premise"]), str(record["hypothesis"]), lid, number)
    return rows.build()


def _read_hf(name: str, config: str | None, split: str, offline_hint: str = "use local files instead") -> NLIData:
    import datasets

    shown = f"hf:{name}" + (f"?config={config}&split={split}" if config else f"?split={split}")
    try:
        table = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types: network, missing config, missing split
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if looks_offline(exc):
            reason = f"the Hugging Face hub is unreachable ({reason}); {offline_hint}"
        raise UserError(f"cannot load dataset {shown}: {reason}") from None
    missing = [k for k in ("premise", "hypothesis", "label") if k not in table.column_names]
    if missing:
        raise UserError(f"dataset {shown}: no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
    # Map the dataset's own label ids through its ClassLabel names when it has them.
    names = getattr(table.features["label"], "names", None)
    to_ours = list(range(len(LABELS)))
    if names:
        to_ours = [label_id(n) for n in names]
        if None in to_ours or len(set(to_ours)) != len(to_ours):
            raise UserError(f"dataset {shown}: label names {names} are not {', '.join(LABELS)}")
    rows = _Builder(shown)
    for row, (premise, hypothesis, label) in enumerate(zip(table["premise"], table["hypothesis"], table["label"])):
        if label == NO_GOLD_LABEL:
            rows.skipped += 1
            continue
        if not 0 <= label < len(to_ours):
            raise _unknown_label(f"{shown} row {row}", label)
        rows.add(premise, hypothesis, to_ours[label], row)
    return rows.build()


def read_nli(source: str | os.PathLike) -> NLIData:
    """Read one source (see the module docstring) into `NLIData`."""
    spec = str(source).strip()
    if spec.startswith("hf:"):
        name, _, query = spec[3:].partition("?")
        options = dict(parse_qsl(query))
        unknown = set(options) - {"config", "split"}
        if not name or unknown:
            raise UserError(f"NLI source {spec!r}: expected hf:NAME?config=CONFIG&split=SPLIT")
        return _read_hf(name, options.get("config"), options.get("split", "train"))
    if not os.path.exists(spec):
        raise UserError(f"NLI file not found: {spec}")
    if os.path.isdir(spec):
        raise UserError(f"NLI source {spec} is a folder; name a .tsv or .jsonl file")
    bare = spec.lower()
    for suffix in (".gz", ".bz2", ".xz"):
        bare = bare.removesuffix(suffix)
    if bare.endswith((".jsonl", ".ndjson", ".json")):
        return _read_jsonl(spec)
    if bare.endswith((".tsv", ".tab", ".txt")):
        return _read_tsv(spec)
    raise UserError(f"NLI file {spec}: expected .tsv (premise, hypothesis, label) or .jsonl")


def xnli_split(data_dir: str | os.PathLike | None, split: str, lang: str) -> NLIData:
    """XNLI pairs of one language and split: `{data_dir}/{split}-{lang}.tsv` (XTREME's layout;
    `validation` finds `dev-*`), or `facebook/xnli` on the hub when `data_dir` is None."""
    if data_dir is None:
        if lang not in XNLI_LANGUAGES:
            raise UserError(f"no XNLI data for language {lang!r}: {XNLI_DATASET} has {', '.join(XNLI_LANGUAGES)}; "
                            "pass --data DIR with {split}-{lang}.tsv files for others")
        return _read_hf(XNLI_DATASET, lang, _HUB_SPLIT.get(split, split),
                        offline_hint="pass --data DIR, a folder of XTREME-style {split}-{lang}.tsv files")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"--data {folder}: not a folder (expected one holding {split}-{lang}.tsv files)")
    file_split = _LOCAL_SPLIT.get(split, split)
    for suffix in ("", ".gz", ".bz2", ".xz"):
        path = folder / f"{file_split}-{lang}.tsv{suffix}"
        if path.exists():
            return read_nli(path)
    have = sorted(p.name.split(".")[0].split("-", 1)[1] for p in folder.glob(f"{file_split}-*.tsv*"))
    listing = f"it has {file_split} data for {', '.join(have)}" if have else f"it has no {file_split}-*.tsv files"
    raise UserError(f"no XNLI data for language {lang!r}: {folder / f'{file_split}-{lang}.tsv'} does not exist "
                    f"({listing})")
