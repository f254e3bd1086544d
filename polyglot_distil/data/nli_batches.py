"""NLI training data as the training loop takes it: the pairs of every source, tokenised once,
in seeded, padded batches (`NLIBatches`); shared by `finetune` and `distil task`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyglot_distil.data.nli import NLIData, read_nli
from polyglot_distil.errors import UserError
from polyglot_distil.options import APPEND, READS, setting

def read_task_data(train: list[str], dev: list[str], max_train_pairs: int | None, seed: int
                   ) -> tuple[NLIData, NLIData]:
    """The training and dev pairs of every source; with `max_train_pairs`, a seeded sample of
    the training pairs (kept in source order)."""
    train_data = NLIData.concat([read_nli(s) for s in train])
    dev_data = NLIData.concat([read_nli(s) for s in dev])
    if max_train_pairs is not None:
        if max_train_pairs < 1:
            raise UserError(f"--max-train-pairs must be at least 1, not {max_train_pairs}")
        if max_train_pairs < len(train_data):
            chosen = np.random.default_rng(seed).choice(len(train_data), max_train_pairs, replace=False)
            train_data = train_data.select(np.sort(chosen))
    return train_data, dev_data


@dataclass
class EncodedPairs:
    """Tokenised (premise, hypothesis) pairs, flat: pair i is tokens offsets[i]:offsets[i+1]."""

    input_ids: np.ndarray  # int32[T]
    token_type_ids: np.ndarray | None  # int8[T], for tokenizers that have them (BERT)
    offsets: np.ndarray  # int64[N + 1]
    pad_id: int

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode_pairs(tokenizer, data: NLIData, max_length: int, progress: bool | None = None,
                 chunk: int = 4096) -> EncodedPairs:
    """Tokenise every pair once, truncated to `max_length` tokens (longest first), unpadded."""
    from polyglot_distil.progress import progress as progress_display

    if max_length < 8:
        raise UserError(f"--max-length must be at least 8 tokens, not {max_length}")
    with_types = "token_type_ids" in tokenizer.model_input_names
    ids, types, lengths = [], [], []
    for start in progress_display(range(0, len(data), chunk), desc="tokenize", unit=" chunks", show=progress):
        end = start + chunk
        encoded = tokenizer(data.premises[start:end], data.hypotheses[start:end], truncation=True,
                            max_length=max_length, padding=False, return_token_type_ids=with_types)
        for i, row in enumerate(encoded["input_ids"]):
            ids.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
            if with_types:
                types.append(np.asarray(encoded["token_type_ids"][i], dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedPairs(np.concatenate(ids), np.concatenate(types) if with_types else None, offsets, pad_id)


def cached_pairs(tokenizer, data: NLIData, max_length: int, progress: bool | None, cache_dir: str | Path,
                 main: bool = True, barrier=None) -> EncodedPairs:
    """`encode_pairs`, done once: the main process tokenizes the pairs into the token cache in
    `cache_dir` (data/token_cache.py, keyed by the pairs' text, the tokenizer and `max_length`),
    and every process, a resumed run included, maps the same files instead of tokenizing them all
    itself."""
    from polyglot_distil.data.token_cache import cached_blocks
    from polyglot_distil.fingerprints import nli_text_digest, tokenizer_state_digest

    key = {"kind": "nli pairs", "pairs": len(data), "text": nli_text_digest(data.premises, data.hypotheses),
           "max_length": max_length, "tokenizer": tokenizer_state_digest(tokenizer)}
    made: dict = {}

    def write(name, handle) -> int:
        if not made:
            made["pairs"] = encode_pairs(tokenizer, data, max_length, progress)
        pairs = made["pairs"]
        array = {"ids": pairs.input_ids, "offsets": pairs.offsets,
                 "types": pairs.token_type_ids if pairs.token_type_ids is not None else np.zeros(0)}[name]
        if name == "offsets" and array[-1] >= 2**31:
            raise UserError(f"{len(data):,} training pairs hold over 2**31 tokens; give fewer (--max-train-pairs)")
        handle.write(np.ascontiguousarray(array, dtype=np.int32).tobytes())
        return len(array)

    arrays = cached_blocks(cache_dir, key, ["ids", "types", "offsets"], write, 1, main=main, barrier=barrier)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    types = arrays["types"].reshape(-1)
    return EncodedPairs(arrays["ids"].reshape(-1), types.astype(np.int8) if len(types) else None,
                        arrays["offsets"].reshape(-1).astype(np.int64), pad_id)


class NLIBatches:
    """Shuffled batches of labelled pairs, batch k a pure function of (seed, k): position
    k % batches_per_epoch of epoch k // batches_per_epoch (a new permutation each epoch; the
    last incomplete batch of an epoch is left out). Returns int64 tensors `input_ids`,
    `attention_mask` (and `token_type_ids`) [batch_size, L], padded to the longest pair of the
    batch, `labels` [batch_size] and `rows` [batch_size] (the pairs' indices in the data).

    With `length_buckets=B` (> 1) each epoch's permutation is cut into groups of B batches, each
    group is sorted by length and cut into batches, and the epoch's batches are shuffled: pairs
    of similar length share a batch, so there is less padding to compute on, while every batch
    is still a random draw from a random group."""

    def __init__(self, pairs: EncodedPairs, labels: np.ndarray, batch_size: int, seed: int = 0,
                 length_buckets: int = 0):
        if len(pairs) < batch_size:
            raise UserError(f"--batch-size {batch_size} is more than the {len(pairs)} training pairs; "
                            "give more data or a smaller --batch-size")
        if length_buckets < 0:
            raise UserError(f"--length-buckets must be 0 (off) or more, not {length_buckets}")
        self.pairs, self.labels, self.batch_size, self.seed = pairs, labels, batch_size, seed
        self.length_buckets = length_buckets
        self.batches_per_epoch = len(pairs) // batch_size

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.pairs))
        if self.length_buckets <= 1:
            return order
        lengths = np.diff(self.pairs.offsets)
        used = order[:self.batches_per_epoch * self.batch_size]  # whole batches; the rest waits
        group = self.length_buckets * self.batch_size
        sorted_groups = [chunk[np.argsort(lengths[chunk], kind="stable")] for chunk in np.split(
            used, range(group, len(used), group))]
        batches = np.concatenate(sorted_groups).reshape(self.batches_per_epoch, self.batch_size)
        return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), order[len(used):]])

    def batch(self, index: int) -> dict:
        import torch

        epoch, position = divmod(index, self.batches_per_epoch)
        rows = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        pairs, offsets = self.pairs, self.pairs.offsets
        width = int((offsets[rows + 1] - offsets[rows]).max())
        input_ids = np.full((len(rows), width), pairs.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            start, end = offsets[row], offsets[row + 1]
            input_ids[i, :end - start] = pairs.input_ids[start:end]
            attention[i, :end - start] = 1
            if pairs.token_type_ids is not None:
                types[i, :end - start] = pairs.token_type_ids[start:end]
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
                 "labels": torch.from_numpy(self.labels[rows].astype(np.int64)), "rows": torch.from_numpy(rows)}
        if pairs.token_type_ids is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        return batch


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that the model's forward takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def epoch_batches(pairs: int, batch_size: int) -> int:
    """Whole batches in an epoch of `pairs` training pairs (the remainder is left to later epochs)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    if pairs < batch_size:
        raise UserError(f"--batch-size {batch_size} is more than the {pairs} training pairs; "
                        "give more data or a smaller --batch-size")
    return pairs // batch_size


@dataclass(kw_only=True)
class TaskData:
    """The task data options of `finetune`, `distil task` and `quantize --method qat` (a stage's
    settings inherit them)."""

    task: str = setting("nli", choices=("nli",), help="the task (NLI: 3-way classification)",
                        deprecated="NLI is the only task; drop --task (it goes in the next release)")
    train: list[str] = setting(kind=APPEND, role=READS, metavar="SOURCE",
                               help="English training pairs: TSV/JSONL file or hf:NAME?split=train (repeatable)")
    dev: list[str] = setting(kind=APPEND, role=READS, metavar="SOURCE",
                             help="English dev pairs, for the best model (repeatable)")
    max_train_pairs: int | None = setting(None, help="train on a seeded sample of this many pairs",
                                          renamed_from=("--max-train-examples",))
    max_length: int = setting(128, help="tokens per pair, truncated longest first")
    length_buckets: int = setting(50, advanced=True, help="batch pairs of similar length: sort each group of this many batches by "
                                           "length, then shuffle the batches (less padding); 0: plain random batches")
