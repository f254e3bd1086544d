"""Fingerprints of a run's inputs, so that a resumed run notices a teacher, a student or a corpus
that changed under the same path.

A file is fingerprinted by its size and modification time, and, when it is small (a config, a
tokenizer, a vocabulary: up to 16 MiB), by a SHA-256 of its content too, so that a copy with new
times still matches. A folder (a model) by those of the files that decide what it computes: its
configs, tokenizer files and weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

HASHED_UP_TO = 16 << 20
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".npy")


def file_fingerprint(path: Path) -> dict:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASHED_UP_TO:
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def path_fingerprint(path: Path) -> dict:
    if path.is_file():
        return file_fingerprint(path)
    return {item.name: file_fingerprint(item) for item in sorted(path.iterdir())
            if item.is_file() and item.suffix in MODEL_SUFFIXES and not item.name.startswith(".")
            and item.name != "README.md"}


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
