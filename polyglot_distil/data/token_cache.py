"""Phase 1's token blocks, tokenized once into memory-mapped files that every process reads.

    blocks = cached_blocks(OUT / "cache", key, ["en", "fr"], write, block_size=256, main=rank == 0,
                           barrier=accelerator.wait_for_everyone)     # {lang: int32 memmap [n, 256]}

`key` describes everything the blocks depend on (the corpus's fingerprints, the tokenizer's, the
block settings); its hash names the folder `tokens-HASH/`, so a resumed run, or a rerun on the same
inputs, finds the blocks there and tokenizes nothing. The main process writes the folder (under a
temporary name, renamed when complete: `LANG.int32` per language and `blocks.json`), calling
`write(lang, handle)` to stream a language's blocks into its file; the other processes wait for
it by polling the folder (no collective, so no collective's timeout, however long the corpus
takes), then map the same files. Memory stays flat: the blocks are read from the page cache as
batches use them, never held by any process.

The protocol is `shared_build.build_once`, which the teacher cache uses too. Several nodes: the
cache folder must be on a filesystem every process sees. The main process marks that it is
writing (`.tokens-HASH.writing`) before a barrier; a process that cannot see the mark, nor the
finished folder, within `POLYGLOT_DISTIL_SHARED_FS_TIMEOUT` seconds stops with one line naming
the path (`outputs.wait_visible`). A failure on the main process is written to
`.tokens-HASH.failed`, which the others report instead of waiting for ever; a main process that
died without a word is noticed by its mark's beat.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from polyglot_distil.fingerprints import token_cache_key
from polyglot_distil.shared_build import build_once

META = "blocks.json"
FORMAT = 1


def _open_blocks(folder: Path, block_size: int) -> dict[str, np.ndarray]:
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    out = {}
    for lang, info in meta["languages"].items():
        count = int(info["blocks"])
        if count == 0:
            out[lang] = np.zeros((0, block_size), dtype=np.int32)
        else:
            out[lang] = np.memmap(folder / f"{lang}.int32", dtype=np.int32, mode="r", shape=(count, block_size))
    return out


def cached_blocks(root: str | os.PathLike, key: dict, languages: list[str],
                  write: Callable[[str, BinaryIO], int], block_size: int, main: bool = True,
                  barrier: Callable[[], None] | None = None, prune: bool = True) -> dict[str, np.ndarray]:
    """{lang: int32 blocks [n, block_size]}, memory-mapped from `root/tokens-HASH/`, written
    first (by the main process, `write(lang, handle) -> blocks written`) when missing. Every
    process calls it; `barrier` (all processes) runs once in each, after the main process has
    marked that it is writing (shared_build.build_once). `prune`: writing removes the blocks of
    other inputs from `root` (a run's own cache); off for a folder that several runs share."""
    root = Path(root)
    folder = root / f"tokens-{token_cache_key(FORMAT, key)}"

    def fill(tmp: Path) -> None:
        if prune:  # blocks of other inputs (an --overwrite with new settings)
            for stale in root.glob("tokens-*"):
                if stale.is_dir() and stale != folder:
                    shutil.rmtree(stale, ignore_errors=True)
            for stale in root.glob(".tokens-*.failed"):
                stale.unlink(missing_ok=True)
        meta = {"key": key, "languages": {}}
        for lang in languages:
            with open(tmp / f"{lang}.int32", "wb") as handle:
                meta["languages"][lang] = {"blocks": int(write(lang, handle))}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    build_once(folder, fill, main=main, barrier=barrier, done=META, doing="tokenize the corpus")
    return _open_blocks(folder, block_size)
