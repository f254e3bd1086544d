"""`UsedRowsEmbedding`, what `finetune --reduce-vocab` trains: the original's vectors for every id,
trained or not; gradients only on the used rows (none on the padding row); the full matrix back
for saving; no buffer that DDP would broadcast at every step. (That training with it saves full
training's weights: tests/test_finetune.py.)"""

from __future__ import annotations

import numpy as np
import torch

from polyglot_distil.models.used_vocab import UsedRowsEmbedding, used_token_ids


def embedding() -> torch.nn.Embedding:
    torch.manual_seed(0)
    return torch.nn.Embedding(50, 8, padding_idx=1)


def test_every_id_gets_the_original_vector_and_only_used_rows_learn():
    source = embedding()
    restricted = UsedRowsEmbedding(source, np.array([1, 3, 7, 20]))
    ids = torch.tensor([[3, 7, 1, 1], [20, 5, 42, 3]])  # 5 and 42 are not trained rows
    assert torch.equal(restricted(ids), source(ids))
    restricted(ids).sum().backward()
    assert restricted.weight.shape == (4, 8)
    assert torch.equal(restricted.weight.grad[0], torch.zeros(8))  # the padding row (id 1)
    assert torch.equal(restricted.weight.grad[1], 2 * torch.ones(8))  # id 3, twice
    assert list(restricted.buffers()) == [] and [n for n, _ in restricted.named_parameters()] == ["weight"]


def test_the_full_matrix_comes_back_with_the_trained_rows_written_in():
    source = embedding()
    restricted = UsedRowsEmbedding(source, np.array([3, 7]))
    with torch.no_grad():
        restricted.weight.add_(1.0)
    full = restricted.full_embedding()
    expected = source.weight.detach().clone()
    expected[[3, 7]] += 1.0
    assert torch.equal(full.weight, expected) and full.padding_idx == 1
    assert restricted.to(torch.float64).frozen.dtype == torch.float64 and restricted.id_map.dtype == torch.long


def test_used_ids_are_the_data_and_the_given_ids_ascending():
    assert used_token_ids([np.array([5, 3, 5]), [9]], [0, None, 99], vocab_size=10).tolist() == [0, 3, 5, 9]
