"""Every fingerprint the project keeps, in one place: what each is for and which record stores it.

A fingerprint says "made from these inputs" so that a cache is reused, a completed `run` stage is
skipped and a training run resumes only when nothing they depend on changed. Their values are part
of those records: changing how one is computed makes every cache miss, every completed stage run
again and every resumed run refuse its checkpoint (tests/test_fingerprints.py pins each value).

What each identifies, and where it is stored:

- `file_fingerprint`, `path_fingerprint`: a file (size, modification time, and the SHA-256 of one
  up to 16 MiB) or a model folder (its configs, tokenizer files and weights); `input_fingerprints`:
  every existing local path a run's settings name. In a training run's `run_config.json` and in
  `run`'s stage markers `DONE.json` (`inputs`; `changed_inputs` compares two), and in phase 1's
  token-cache key (`sources`).
- `tokenizer_fingerprint`: a vocabulary in id order and the tokenizer model's type. In the counts
  Parquet file's metadata (`tokenizer_fingerprint`), which `trim` checks.
- `hashed_lines`: the SHA-256 of the lines a count read for one language. In the counts Parquet
  file's metadata (`languages.LANG.text_sha256`), by which `merge` refuses the same text counted
  twice under two paths.
- `tokenizer_json_digest`: a tokenizer as serialized (its `tokenizer.json`). Phase 1's token-cache
  key (`tokenizer`).
- `tokenizer_state_digest`, `nli_text_digest`: a tokenizer without its truncation and padding
  (which each call sets), the pairs' text. The NLI pairs' token-cache key (`tokenizer`, `text`).
- `token_cache_key`: what a token cache's blocks were made from (the parts above). The folder
  name `tokens-KEY` (data/token_cache.py).
- `teacher_cache_key`: the teacher's weight and config files (name, size, time), the pairs'
  tokens, the kept layers, the length. The teacher cache's `cache.json` (`key`).
- `prediction_key`: a model folder's files (name, size, time), XNLI pairs and labels, the
  settings and the library versions. A predictions file's name, `NAME-KEY.npy` (eval/predict.py).
- `body_fingerprint`: the named tensors of a student's body (name, dtype, shape, bytes).
  `sparse_diff.json` (`base_fingerprint`): which phase-1 student a diff applies to.
- `run_config_hash`: a training run's settings, less those that change no result. Its
  `run_config.json` (`hash`), its checkpoints (`config_hash`), and `distil search-map`'s
  `search_config.json` (`hash`).
- `argv_hash`: a `run` stage's command line under the options' first names. `DONE.json`
  (`argv_hash`).

The two tokenizer digests differ (one keeps truncation and padding); both are kept as they are, so
that the caches made with them stay valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

HASHED_UP_TO = 16 << 20
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".npy")


def json_digest(value: Any, length: int | None = None) -> str:
    """SHA-256 (hex) of `value` as JSON with sorted keys, cut to its first `length` digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's content, read in blocks of 4 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Files and the inputs of a run


def file_fingerprint(path: Path) -> dict:
    """{size, mtime_ns} and, for a file up to 16 MiB, its sha256: a copy with new times still
    matches."""
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASHED_UP_TO:
        record["sha256"] = file_sha256(path)
    return record


def path_fingerprint(path: Path) -> dict:
    """A file's fingerprint, or {name: fingerprint} of the files of a folder that decide what a
    model computes: configs, tokenizer files and weights."""
    if path.is_file():
        return file_fingerprint(path)
    return {item.name: file_fingerprint(item) for item in sorted(path.iterdir())
            if item.is_file() and item.suffix in MODEL_SUFFIXES and not item.name.startswith(".")}


def _paths_in(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _paths_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths_in(item)
    elif isinstance(value, (str, os.PathLike)):
        text = str(value).split("?", 1)[0]  # a source's options (`file.tsv?columns=premise`)
        if text and not text.startswith("hf:") and os.path.exists(text):
            yield text


def input_fingerprints(run_config: dict, skip: Iterable[str] = ()) -> dict:
    """{path: fingerprint} for every existing local path named in `run_config` (a run's models and
    data), except those under `skip` (the run's own output folder)."""
    skipped = [os.path.abspath(s) for s in skip]
    found = {}
    for text in _paths_in(run_config):
        absolute = os.path.abspath(text)
        if any(absolute == s or absolute.startswith(s + os.sep) for s in skipped):
            continue
        found[text] = path_fingerprint(Path(text))
    return found


def _file_changed(old: dict, new: dict | None) -> str | None:
    if new is None:
        return "is gone"
    if old.get("size") != new.get("size"):
        return f"changed size ({old.get('size'):,} -> {new.get('size'):,} bytes)"
    if old.get("mtime_ns") == new.get("mtime_ns"):
        return None
    if "sha256" in old and "sha256" in new:
        return None if old["sha256"] == new["sha256"] else "changed content"
    return "was modified since the run started"


def changed_inputs(saved: dict, now: dict) -> list[str]:
    """What differs between two `input_fingerprints` results, one phrase per change."""
    changes = []
    for path, old in saved.items():
        new = now.get(path)
        if new is None:
            changes.append(f"{path} is gone")
            continue
        if ("size" in old) != ("size" in new):  # a file that became a folder, or the other way round
            changes.append(f"{path} is now a {'file' if 'size' in new else 'folder'}")
            continue
        if "size" in old:  # a file
            why = _file_changed(old, new)
            if why:
                changes.append(f"{path} {why}")
            continue
        for name in sorted(set(old) | set(new)):
            if name not in old:
                changes.append(f"{path}/{name} is new")
                continue
            why = _file_changed(old[name], new.get(name))
            if why:
                changes.append(f"{path}/{name} {why}")
    return changes


# ---------------------------------------------------------------------------------------------
# Tokenizers and text


def tokenizer_fingerprint(tokenizer, vocab: list[str]) -> str:
    """sha256 of the vocabulary in id order (`vocab`, models.loading.vocab_in_id_order) and the
    tokenizer model's type: counts made with one tokenizer must not be applied to another."""
    digest = hashlib.sha256(type(tokenizer.backend_tokenizer.model).__name__.encode())
    digest.update("\0".join(vocab).encode("utf-8", errors="surrogatepass") + b"\0")
    return digest.hexdigest()


def hashed_lines(lines: Iterable[str], digest) -> Iterator[str]:
    """Yield `lines` unchanged, adding each, with a newline, to `digest` (a hashlib object): the
    sha256 of the text a count read (`LanguageTotals.text_sha256` in the counts' Parquet
    metadata), by which `merge` knows the same lines counted twice under two paths."""
    for line in lines:
        digest.update(line.encode("utf-8", errors="surrogatepass"))
        digest.update(b"\n")
        yield line


def tokenizer_json_digest(tokenizer) -> str:
    """sha256 of the tokenizer as its `tokenizer.json` would hold it."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def tokenizer_state_digest(tokenizer) -> str:
    """sha256 of the tokenizer without its truncation and padding, which each call sets (a process
    that has tokenized something would otherwise look for another cache than one that has not)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return json_digest(state)


def nli_text_digest(premises: Sequence[str], hypotheses: Sequence[str]) -> str:
    """sha256 of the pairs' text, pair by pair."""
    digest = hashlib.sha256()
    for premise, hypothesis in zip(premises, hypotheses):
        digest.update(premise.encode("utf-8", errors="surrogatepass") + b"\0" +
                      hypothesis.encode("utf-8", errors="surrogatepass") + b"\1")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Caches


def token_cache_key(cache_format: int, parts: dict) -> str:
    """The token cache's folder name, `tokens-KEY`: a hash of what the blocks were made from, in
    any order of `parts`."""
    return json_digest({"format": cache_format, **parts}, length=20)


def teacher_cache_key(cache_format: str, teacher_path: str | os.PathLike, input_ids, offsets,
                      hidden: list[int], attention: list[int], max_length: int) -> str:
    """What cached teacher outputs depend on, hashed: the teacher's weight and config files (name,
    size, modification time), the pairs' tokens (`input_ids`, `offsets`: numpy arrays), the kept
    hidden and attention layers and the length."""
    import numpy as np

    digest = hashlib.sha256(cache_format.encode())
    folder = Path(teacher_path)
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("config.json")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(np.ascontiguousarray(input_ids).tobytes())
    digest.update(np.ascontiguousarray(offsets).tobytes())
    digest.update(json.dumps({"hidden": hidden, "attention": attention, "max_length": max_length}).encode())
    return digest.hexdigest()[:32]


def prediction_key(cache_format: str, model_path: str | os.PathLike, premises: Sequence[str],
                   hypotheses: Sequence[str], labels, settings: dict) -> str:
    """What a local model's XNLI predictions depend on, hashed: its files (name, size,
    modification time), the pairs and their labels, and `settings` (batch size, length, device,
    attention kernel), with the torch and transformers versions."""
    import numpy as np
    import torch
    import transformers

    digest = hashlib.sha256(cache_format.encode())
    path = Path(model_path)
    for file in sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for text in (*premises, *hypotheses):
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update(json.dumps({**settings, "torch": torch.__version__, "transformers": transformers.__version__},
                             sort_keys=True).encode())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Weights and settings


def body_fingerprint(weights: dict, names: list[str]) -> str:
    """sha256 of the named tensors (name, dtype, shape, bytes), in sorted name order: which
    phase-1 student a diff applies to."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = weights[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_config_hash(config: dict) -> str:
    """A training run's settings (those that change its result), hashed: a resumed run must be
    the same run."""
    return json_digest(config, length=16)


def argv_hash(argv: list[str]) -> str:
    """A `run` stage's command line, hashed: a completed stage runs again when it changes."""
    return json_digest(argv, length=16)
