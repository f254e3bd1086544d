"""The teacher's outputs for phase 2, computed once per training pair and memory-mapped.

Phase 2 runs the frozen teacher on every batch, every epoch, in both LT-SFT stages: for a 12-layer
teacher and a 6-layer student most of a step's forward cost. `--teacher-cache DIR` computes what
the losses read (the logits in XNLI order; the hidden states and attention maps of the mapped
layers, only those the enabled losses use) once, for every training pair, stores it in float16
under DIR, and serves batches from it: every epoch, both stages, a resumed run and any other
student distilled from the same teacher on the same data read it again.

The cache is keyed by the teacher (its config and weight files: size and modification time), the
tokenised pairs (a hash of their ids), what is stored (layers, terms) and the storage format; a
DIR holding another key is rebuilt (and says so). float16 storage rounds the teacher's outputs to
about 3 significant digits, which the losses tolerate (a soft target, not an exact one); a run
without the cache computes them in float32.

Layout of DIR: `cache.json` (the key, the shapes), `logits.npy` float16 [N, 3], and per stored
teacher state / attention layer `hidden-K.npy` float16 [tokens, H] and `attention-K.npy` float16
[sum of heads x len x len], with `offsets.npy` (token offsets of the pairs) and
`attention_offsets.npy`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import teacher_cache_key
from polyglot_distil.shared_build import build_once

FORMAT = "polyglot-distil teacher cache 1"


class TeacherCache:
    """Cached teacher outputs for the pairs `pairs` (data.nli_batches.EncodedPairs)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "cache.json").read_text(encoding="utf-8"))
        load = lambda name: np.load(self.folder / name, mmap_mode="r")  # noqa: E731
        self.logits = load("logits.npy")
        self.offsets = load("offsets.npy")
        self.attention_offsets = load("attention_offsets.npy") if self.meta["attention"] else None
        self.hidden = {k: load(f"hidden-{k}.npy") for k in self.meta["hidden"]}
        self.attention = {k: load(f"attention-{k}.npy") for k in self.meta["attention"]}
        self.heads = self.meta["heads"]

    @classmethod
    def open_or_build(cls, folder: str | Path, teacher, teacher_path, pairs, teacher_order, hidden: list[int],
                      attention: list[int], max_length: int, batch_size: int, device, accelerator=None,
                      log=None) -> "TeacherCache":
        """The cache in `folder` if it holds this key, else built there first: by the main process,
        while the others poll for it (shared_build.build_once: no collective waits on the build,
        and several runs sharing the folder take turns). `log` takes its progress lines (default: stderr)."""
        folder = Path(folder)
        log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        key = teacher_cache_key(FORMAT, teacher_path, pairs.input_ids, pairs.offsets, hidden, attention, max_length)
        if folder.exists() and not (folder / "cache.json").is_file():
            raise UserError(f"--teacher-cache {folder} exists and is not a teacher cache; give another folder")

        def write(tmp: Path) -> None:
            if folder.exists():
                log(f"teacher cache {folder}: made for another teacher, data or settings; rebuilding it")
            start = time.perf_counter()
            _fill(tmp, key, teacher, pairs, teacher_order, hidden, attention, batch_size, device)
            log(f"teacher cache: {len(pairs):,} pairs in {time.perf_counter() - start:.0f} s, "
                f"{sum(p.stat().st_size for p in tmp.iterdir()) / 1e6:,.0f} MB in {folder}")

        build_once(folder, write, main=accelerator is None or accelerator.is_main_process,
                   barrier=accelerator.wait_for_everyone if accelerator is not None else None,
                   done="cache.json", ready=lambda: _holds(folder, key), tag=key,
                   doing=f"build the teacher cache {folder}")
        return cls(folder)

    def batch(self, rows, width: int, device) -> dict:
        """The teacher's outputs for pairs `rows` padded to `width` tokens, as the losses take them:
        {"logits": [B, 3] (XNLI order), "hidden": {k: [B, width, H]}, "attentions": {k: [B, A, width, width]}}
        in float32, zero at padding."""
        import torch

        rows = [int(r) for r in rows]
        out = {"logits": torch.from_numpy(np.asarray(self.logits[rows], dtype=np.float32)).to(device),
               "hidden": {}, "attentions": {}}
        for k, array in self.hidden.items():
            block = np.zeros((len(rows), width, array.shape[1]), dtype=np.float32)
            for i, r in enumerate(rows):
                start, end = self.offsets[r], self.offsets[r + 1]
                block[i, :end - start] = array[start:end]
            out["hidden"][k] = torch.from_numpy(block).to(device)
        for k, array in self.attention.items():
            block = np.zeros((len(rows), self.heads, width, width), dtype=np.float32)
            for i, r in enumerate(rows):
                n = int(self.offsets[r + 1] - self.offsets[r])
                start = self.attention_offsets[r]
                block[i, :, :n, :n] = array[start:start + self.heads * n * n].reshape(self.heads, n, n)
            out["attentions"][k] = torch.from_numpy(block).to(device)
        return out


def _holds(folder: Path, key: str) -> bool:
    meta = folder / "cache.json"
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def _fill(tmp: Path, key: str, teacher, pairs, teacher_order, hidden: list[int], attention: list[int],
          batch_size: int, device) -> None:
    """Run the teacher over every pair (length-sorted batches) and write the arrays into `tmp`."""
    import torch
    from polyglot_distil.progress import progress

    n = len(pairs)
    lengths = np.diff(pairs.offsets).astype(np.int64)
    heads = teacher.config.num_attention_heads
    total = int(lengths.sum())
    attention_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(heads * lengths * lengths, out=attention_offsets[1:])
    arrays = {"logits.npy": ((n, 3), "logits")}
    arrays.update({f"hidden-{k}.npy": ((total, teacher.config.hidden_size), ("hidden", k)) for k in hidden})
    arrays.update({f"attention-{k}.npy": ((int(attention_offsets[-1]),), ("attention", k)) for k in attention})
    files = {name: np.lib.format.open_memmap(tmp / name, mode="w+", dtype=np.float16, shape=shape)
             for name, (shape, _) in arrays.items()}
    order = np.argsort(-lengths, kind="stable")
    with torch.inference_mode(), progress(total=n, desc="teacher cache", unit=" pairs") as bar:
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), pairs.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                a, b = pairs.offsets[r], pairs.offsets[r + 1]
                ids[i, :b - a], mask[i, :b - a] = pairs.input_ids[a:b], 1
                if pairs.token_type_ids is not None:
                    types[i, :b - a] = pairs.token_type_ids[a:b]
            inputs = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
            if pairs.token_type_ids is not None:
                inputs["token_type_ids"] = torch.from_numpy(types).to(device)
            out = teacher(**inputs, output_hidden_states=bool(hidden), output_attentions=bool(attention))
            files["logits.npy"][rows] = out.logits[:, teacher_order].float().cpu().numpy()
            for i, r in enumerate(rows):
                m = int(lengths[r])
                a = int(pairs.offsets[r])
                for k in hidden:
                    files[f"hidden-{k}.npy"][a:a + m] = out.hidden_states[k][i, :m].float().cpu().numpy()
                for k in attention:
                    s = int(attention_offsets[r])
                    files[f"attention-{k}.npy"][s:s + heads * m * m] = \
                        out.attentions[k][i, :, :m, :m].float().cpu().numpy().reshape(-1)
            bar.update(len(rows))
    for array in files.values():
        array.flush()
    np.save(tmp / "offsets.npy", np.asarray(pairs.offsets, dtype=np.int64))
    if attention:
        np.save(tmp / "attention_offsets.npy", attention_offsets)
    (tmp / "cache.json").write_text(json.dumps({"format": FORMAT, "key": key, "pairs": n, "hidden": hidden,
                                                "attention": attention, "heads": heads}, indent=1), encoding="utf-8")
