"""Training on the vocabulary the data uses: the input embedding's trained rows are only those of
tokens the training data holds; every other row stays frozen, and the full matrix is put back
before a model is saved (the idea of flair's and transformer-smaller-training-vocab's reduced
training vocabulary, without renumbering the tokenizer).

Why: multilingual-e5-small has 96M of its 118M parameters in a 250,037-row embedding, and English
NLI uses a few thousand of those rows; full training still has AdamW read and write every row's
weight, gradient and two moments at every step. Here the gradient and the optimizer's moments
cover the used rows only.

Exactness: a row that no training token uses gets a zero gradient in full training, so with
weight decay 0 AdamW never moves it; the rows used here get the same gradients and updates as
there. So with `--weight-decay 0` the saved model equals full training's, bitwise (tested on a
tiny model). With weight decay > 0, full training shrinks every row of the matrix a little at
every step, and here the rows the data never uses keep their values.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F


class UsedRowsEmbedding(torch.nn.Module):
    """Stands in for a model's input embedding (an `nn.Embedding` of V rows) during training:
    `weight` [U, H] holds the trainable rows `used_ids` (int64[U], ascending); `frozen` [V, H]
    the whole matrix as loaded, used for any other id (e.g. an evaluation token the training data
    lacks), with no gradient. Takes the original token ids, so the model, its tokenizer and its
    evaluation are unchanged."""

    def __init__(self, embedding: torch.nn.Embedding, used_ids: np.ndarray):
        super().__init__()
        used = torch.as_tensor(np.asarray(used_ids), dtype=torch.long, device=embedding.weight.device)
        rows, width = embedding.weight.shape
        self.num_embeddings, self.embedding_dim = rows, width
        id_map = torch.full((rows,), -1, dtype=torch.long, device=used.device)
        id_map[used] = torch.arange(len(used), device=used.device)
        # Plain tensors, not buffers: DDP would broadcast every buffer from the first process at every
        # step, and `frozen` is the whole matrix. `_apply` moves them with the module.
        self.id_map = id_map
        self.frozen = embedding.weight.detach().clone()
        self.weight = torch.nn.Parameter(embedding.weight.detach().index_select(0, used).clone())
        pad = embedding.padding_idx
        self.source_padding_idx = pad
        self.padding_idx = int(id_map[pad]) if pad is not None and int(id_map[pad]) >= 0 else None

    def _apply(self, fn, recurse=True):  # .to(device), .half() and the like reach the plain tensors too
        super()._apply(fn, recurse)
        self.id_map, self.frozen = fn(self.id_map), fn(self.frozen)
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mapped = self.id_map[input_ids]
        trained = F.embedding(mapped.clamp(min=0), self.weight, self.padding_idx)
        known = mapped >= 0
        if bool(known.all()):
            return trained
        return torch.where(known.unsqueeze(-1), trained, F.embedding(input_ids, self.frozen).to(trained.dtype))

    def full_embedding(self) -> torch.nn.Embedding:
        """An `nn.Embedding` [V, H]: the frozen matrix with the trained rows written back."""
        weight = self.frozen.clone()
        used = torch.nonzero(self.id_map >= 0).squeeze(1)
        weight[used] = self.weight.detach().to(weight.dtype)
        # from_pretrained draws no random init: a save in mid-run leaves the dropout stream alone
        return torch.nn.Embedding.from_pretrained(weight, freeze=not self.weight.requires_grad,
                                                  padding_idx=self.source_padding_idx)


def used_token_ids(token_lists, special_ids, vocab_size: int) -> np.ndarray:
    """int64[U]: the ids that occur in `token_lists` (an iterable of int sequences, e.g. the
    tokenized training pairs) or are `special_ids`, ascending."""
    seen = np.zeros(vocab_size, dtype=bool)
    for ids in token_lists:
        seen[np.asarray(ids, dtype=np.int64)] = True
    seen[[i for i in special_ids if i is not None and 0 <= i < vocab_size]] = True
    return np.flatnonzero(seen)


def restrict_to_used_rows(model, used_ids: np.ndarray) -> UsedRowsEmbedding:
    """In place: `model`'s input embedding becomes a `UsedRowsEmbedding` training `used_ids`.
    Refused (ValueError) for a model whose output embedding is tied to its input embedding (a
    masked-LM): its decoder reads every row."""
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is embedding.weight:
        raise ValueError("the output embedding is tied to the input embedding: every row is used")
    restricted = UsedRowsEmbedding(embedding, used_ids)
    model.set_input_embeddings(restricted)
    return restricted


def restrict_to_pairs(model, pairs) -> tuple[str, np.ndarray, str]:
    """In place: `model` trains only the input-embedding rows that the tokenized `pairs`
    (`data.nli_batches` pairs: `input_ids`, `pad_id`) use, the batches' padding included. Returns
    (the embedding parameter's name, those rows, a line saying so for the log)."""
    embedding = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is embedding)
    used = used_token_ids([pairs.input_ids], [pairs.pad_id], embedding.shape[0])
    restrict_to_used_rows(model, used)
    return name, used, (f"training {len(used):,} of the {embedding.shape[0]:,} embedding rows: those the training "
                        "pairs use (--reduce-vocab; all rows are saved)")


@contextlib.contextmanager
def full_vocabulary(model):
    """Within the block, `model` has its full input embedding back (trained rows written in), as
    saving needs; a model without a `UsedRowsEmbedding` is left as it is."""
    restricted = model.get_input_embeddings()
    if not isinstance(restricted, UsedRowsEmbedding):
        yield model
        return
    model.set_input_embeddings(restricted.full_embedding())
    try:
        yield model
    finally:
        model.set_input_embeddings(restricted)
