"""Masked-LM training data: text -> token blocks -> masked batches, languages balanced.

    ids = encode_text(lines, tokenizer)                                 # int32 [tokens], no specials
    blocks = to_blocks(ids, 256, cls_id, sep_id)                        # int32 [n, 256]
    data = LanguageBatches({"en": en_blocks, "fr": fr_blocks}, batch_size=8, masking=Masking.for_tokenizer(tok))
    batch = data.batch(k)                                               # the global batch of step k

Each language's text is tokenized without special tokens, concatenated, and cut into blocks of
`block_size` tokens: `[CLS] body [SEP]` (`<s> body </s>` for XLM-R); the tail shorter than one
block is dropped, so training blocks hold no padding. Every epoch, each language contributes the
same number of blocks (the smallest language's count; larger languages give a different random
subset each epoch), cut into batches that each come from one language, in shuffled order.

Everything about batch k -- which blocks, which tokens are masked and how -- is a function of
(seed, epoch, position) only, never of iterator state: a resumed run sees exactly the batches an
uninterrupted run sees, and any number of processes split the same global batch by rows.

Masking (BERT): 15% of the non-special tokens are chosen; of those 80% become the mask token,
10% a random token, 10% stay unchanged. Labels are the original ids at chosen positions, -100
elsewhere.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable

import numpy as np
import torch

from polyglot_distil.data.tokenization import untruncated

IGNORE_INDEX = -100


def encode_text(lines: Iterable[str], tokenizer, batch_lines: int = 1024,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Token ids of all `lines`, concatenated, without special tokens: int32 [total tokens]."""
    parts: list[np.ndarray] = []
    iterator = iter(lines)
    with untruncated(tokenizer) as backend:
        while batch := list(itertools.islice(iterator, batch_lines)):
            for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
                parts.append(np.asarray(encoding.ids, dtype=np.int32))
            if progress is not None:
                progress(len(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def to_blocks(ids: np.ndarray, block_size: int, first_id: int, last_id: int) -> np.ndarray:
    """Cut `ids` into blocks `[first_id, block_size - 2 tokens, last_id]`: int32 [n, block_size].
    The tail shorter than a block is dropped."""
    body = block_size - 2
    count = len(ids) // body
    blocks = np.empty((count, block_size), dtype=np.int32)
    blocks[:, 0] = first_id
    blocks[:, 1:-1] = ids[: count * body].reshape(count, body)
    blocks[:, -1] = last_id
    return blocks


def write_blocks(lines: Iterable[str], tokenizer, block_size: int, first_id: int, last_id: int, handle: BinaryIO,
                 batch_lines: int = 1024, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Tokenize `lines` a batch at a time and write their blocks to the binary `handle` (int32,
    row-major, exactly the rows `to_blocks(encode_text(lines), ...)` gives), holding one batch of
    lines and less than one block of left-over tokens, never an array per line.
    Returns (blocks written, tokens read)."""
    body = block_size - 2
    tail = np.zeros(0, dtype=np.int32)
    blocks = tokens = 0
    iterator = iter(lines)
    with untruncated(tokenizer) as backend:
        while batch := list(itertools.islice(iterator, batch_lines)):
            encodings = backend.encode_batch_fast(batch, add_special_tokens=False)
            ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32)
            del encodings
            tokens += len(ids)
            ids = np.concatenate([tail, ids]) if len(tail) else ids
            count = len(ids) // body
            if count:
                handle.write(to_blocks(ids[: count * body], block_size, first_id, last_id).tobytes())
                blocks += count
            tail = ids[count * body:].copy()
            if progress is not None:
                progress(len(batch))
    return blocks, tokens


class Rows:
    """Chosen rows of a block array (a memory map), without copying them: `len`, and indexing
    with an index array gives those rows as an array (read from the map then)."""

    def __init__(self, blocks: np.ndarray, indices: np.ndarray):
        self.blocks, self.indices = blocks, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index) -> np.ndarray:
        return self.blocks[self.indices[index]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self.blocks[self.indices]
        return rows if dtype is None else rows.astype(dtype)


def split_heldout(blocks: np.ndarray, count: int, seed: int) -> tuple[Rows, Rows]:
    """(training blocks, `count` held-out blocks chosen at random with `seed`), as `Rows` of
    `blocks`: views, so a memory-mapped block array is not read into memory."""
    order = np.random.default_rng([seed, 7919]).permutation(len(blocks))
    held = np.sort(order[:count])
    keep = np.sort(order[count:])
    return Rows(blocks, keep), Rows(blocks, held)


@dataclass(frozen=True)
class Masking:
    """How tokens are masked. `special_ids` are never chosen; random replacements are drawn
    uniformly from `[0, vocab_size)`."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15
    mask_share: float = 0.8
    random_share: float = 0.1

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int, probability: float = 0.15) -> "Masking":
        return cls(mask_id=int(tokenizer.mask_token_id), vocab_size=int(vocab_size),
                   special_ids=tuple(sorted(int(i) for i in tokenizer.all_special_ids)), probability=probability)


def mask_tokens(input_ids: torch.Tensor, masking: Masking, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of int64 `input_ids` [B, L]: returns (masked ids [B, L], labels [B, L] with
    -100 at positions not chosen). Draws only from `generator`."""
    special = torch.isin(input_ids, torch.tensor(masking.special_ids, dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < masking.probability) & ~special
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    draw = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (draw < masking.mask_share)
    to_random = chosen & (draw >= masking.mask_share) & (draw < masking.mask_share + masking.random_share)
    random_ids = torch.randint(masking.vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(to_mask, masking.mask_id, input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class LanguageBatches:
    """Masked batches, each from one language, the languages balanced.

    `blocks[lang]` is int32 [n_lang, L]. Batch k (`batch(k)`) is position `k % batches_per_epoch`
    of epoch `k // batches_per_epoch`; it holds `batch_size` rows (the global batch: processes and
    accumulated micro-batches take equal slices of rows). Returns int64 tensors `input_ids`,
    `attention_mask`, `labels` [batch_size, L] and `language` (str).
    """

    def __init__(self, blocks: dict[str, np.ndarray], batch_size: int, masking: Masking, seed: int = 0):
        self.blocks = blocks
        self.languages = list(blocks)
        self.batch_size = batch_size
        self.masking = masking
        self.seed = seed
        self.blocks_per_language = min(len(b) for b in blocks.values())
        self.batches_per_language = self.blocks_per_language // batch_size
        self.batches_per_epoch = self.batches_per_language * len(self.languages)

    @functools.lru_cache(maxsize=2)
    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per batch slot: its language index and which of that language's batches it is; per
        language: the block indices of its batches [batches_per_language, batch_size]."""
        rng = np.random.default_rng([self.seed, epoch])
        rows = []
        for lang in self.languages:
            chosen = rng.permutation(len(self.blocks[lang]))[: self.batches_per_language * self.batch_size]
            rows.append(chosen.reshape(self.batches_per_language, self.batch_size))
        slots = rng.permutation(np.repeat(np.arange(len(self.languages)), self.batches_per_language))
        nth = np.empty_like(slots)
        for lang_index in range(len(self.languages)):
            where = np.flatnonzero(slots == lang_index)
            nth[where] = np.arange(len(where))
        return slots, nth, rows

    def batch(self, index: int) -> dict:
        epoch, position = divmod(index, self.batches_per_epoch)
        slots, nth, rows = self._epoch_plan(epoch)
        lang_index = int(slots[position])
        lang = self.languages[lang_index]
        input_ids = torch.from_numpy(self.blocks[lang][rows[lang_index][nth[position]]].astype(np.int64))
        masked, labels = mask_tokens(input_ids, self.masking, _generator(self.seed, epoch, position))
        return {"input_ids": masked, "attention_mask": torch.ones_like(masked), "labels": labels, "language": lang}
