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

Several nodes: the cache folder must be on a filesystem every process sees. The main process
marks that it is writing (`tokens-HASH.writing`) before a barrier; a process that cannot see the
mark, nor the finished folder, within `POLYGLOT_DISTIL_SHARED_FS_TIMEOUT` seconds stops with one
line naming the path (`outputs.wait_visible`). A failure on the main process is written to
`tokens-HASH.failed`, which the others report instead of waiting for ever.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.outputs import room_checked, wait_visible

META = "blocks.json"
FORMAT = 1


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()[:20]


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
                  barrier: Callable[[], None] | None = None, poll_seconds: float = 1.0,
                  prune: bool = True) -> dict[str, np.ndarray]:
    """{lang: int32 blocks [n, block_size]}, memory-mapped from `root/tokens-HASH/`, written
    first (by the main process, `write(lang, handle) -> blocks written`) when missing. Every
    process calls it; `barrier` (all processes) runs once in each, after the main process has
    marked that it is writing. `prune`: writing removes the blocks of other inputs from `root`
    (a run's own cache); off for a folder that several runs share."""
    root = Path(root)
    folder = root / f"tokens-{cache_key(key)}"
    writing, failed = folder.with_name(folder.name + ".writing"), folder.with_name(folder.name + ".failed")
    done = folder / META
    if main:
        ready = done.is_file()
        if not ready:
            root.mkdir(parents=True, exist_ok=True)
            failed.unlink(missing_ok=True)
            writing.write_text(json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}),
                               encoding="utf-8")
        if barrier is not None:
            barrier()
        if not ready:
            try:
                _write(root, folder, key, languages, write, prune)
            except BaseException as exc:
                failed.write_text(str(exc) if isinstance(exc, UserError) else type(exc).__name__, encoding="utf-8")
                raise
            finally:
                writing.unlink(missing_ok=True)
    else:
        if barrier is not None:
            barrier()
        # The main process marked the cache (or finished it) before the barrier: not seeing either
        # means this process does not see the main process's files at all.
        wait_visible([done, writing, failed], what="the token cache the main process writes")
        while not done.is_file():
            if failed.is_file():
                reason = failed.read_text(encoding="utf-8").strip()
                raise UserError(f"the main process could not tokenize the corpus ({reason}); see its output")
            time.sleep(poll_seconds)
    return _open_blocks(folder, block_size)


def _write(root: Path, folder: Path, key: dict, languages: list[str], write: Callable[[str, BinaryIO], int],
           prune: bool = True) -> None:
    for stale in root.glob("tokens-*"):  # blocks of other inputs (an --overwrite with new settings)
        if stale.is_dir() and stale != folder and prune:
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.suffix == ".failed":
            stale.unlink(missing_ok=True)
    tmp = root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"key": key, "languages": {}}
    try:
        with room_checked(folder):
            for lang in languages:
                with open(tmp / f"{lang}.int32", "wb") as handle:
                    meta["languages"][lang] = {"blocks": int(write(lang, handle))}
            (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
