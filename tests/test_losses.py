"""The distillation losses: values against plain formulas, padding ignored, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polyglot_distil.distill import losses


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def _padded_mask() -> torch.Tensor:
    mask = torch.ones(2, 5)
    mask[1, 3:] = 0  # the second sequence ends with two padding positions
    return mask


def test_hidden_mse_without_padding_is_the_mean_of_plain_mses(generator):
    student = [torch.randn(2, 5, 4, generator=generator) for _ in range(3)]
    teacher = [torch.randn(2, 5, 4, generator=generator) for _ in range(3)]
    expected = sum(F.mse_loss(s, t) for s, t in zip(student, teacher)) / 3
    assert torch.allclose(losses.hidden_mse(student, teacher, torch.ones(2, 5)), expected)


def test_hidden_mse_ignores_padding_positions(generator):
    student, teacher = [torch.randn(2, 5, 4, generator=generator)], [torch.randn(2, 5, 4, generator=generator)]
    mask = _padded_mask()
    changed = student[0].clone()
    changed[1, 3:] += 100.0
    assert torch.allclose(losses.hidden_mse(student, teacher, mask), losses.hidden_mse([changed], teacher, mask))
    tokens = mask.bool()
    assert torch.allclose(losses.hidden_mse(student, teacher, mask), F.mse_loss(student[0][tokens], teacher[0][tokens]))


def test_attention_mse_ignores_padded_queries_and_keys(generator):
    mask = _padded_mask()
    student = [torch.rand(2, 3, 5, 5, generator=generator)]
    teacher = [torch.rand(2, 3, 5, 5, generator=generator)]
    changed = student[0].clone()
    changed[1, :, 3:, :] = 7.0  # padded queries
    changed[1, :, :, 3:] = 7.0  # padded keys
    assert torch.allclose(losses.attention_mse(student, teacher, mask), losses.attention_mse([changed], teacher, mask))
    real = torch.cat([(student[0][0] - teacher[0][0]).flatten(),
                      (student[0][1, :, :3, :3] - teacher[0][1, :, :3, :3]).flatten()])
    assert torch.allclose(losses.attention_mse(student, teacher, mask), real.pow(2).mean())


def test_logit_kl_matches_the_textbook_formula_times_t_squared(generator):
    student, teacher, t = torch.randn(6, 11, generator=generator), torch.randn(6, 11, generator=generator), 2.0
    p_teacher = F.softmax(teacher / t, -1)
    expected = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    assert torch.allclose(losses.logit_kl(student, teacher, t), expected, atol=1e-6)
    assert losses.logit_kl(teacher, teacher, t).abs() < 1e-6


def _reference_kl(student, teacher, t, rows=None):
    """The unchunked loss: autograd through log_softmax and kl_div over the whole matrix."""
    kl = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1), log_target=True,
                  reduction="sum")
    return kl / (student.shape[0] if rows is None else rows) * t * t


# One chunk of every row (default size on these small logits), rows one by one, chunks that do and
# do not divide the 7 rows, more rows per chunk than there are.
@pytest.mark.parametrize("chunk_rows", [None, 1, 2, 3, 7, 50])
def test_chunked_logit_kl_value_and_gradient_equal_the_unchunked_loss(chunk_rows, generator):
    teacher = torch.randn(7, 13, generator=generator) * 4
    ours = (torch.randn(7, 13, generator=generator) * 4).requires_grad_(True)
    reference = ours.detach().clone().requires_grad_(True)
    value = losses.logit_kl(ours, teacher, 3.0, rows=5.0, chunk_rows=chunk_rows)
    (2.5 * value).backward()  # an upstream gradient other than 1
    reference_value = _reference_kl(reference, teacher, 3.0, rows=5.0)
    (2.5 * reference_value).backward()
    assert torch.allclose(value, reference_value, atol=1e-6)
    assert torch.allclose(ours.grad, reference.grad, atol=1e-7)
    assert value > 0.1 and ours.grad.abs().max() > 1e-3  # not a trivial agreement


@pytest.mark.parametrize("chunk_rows", [1, 4])
def test_chunked_logit_kl_keeps_the_logits_dtype_and_matches_in_bfloat16(chunk_rows, generator):
    teacher = torch.randn(6, 50, generator=generator).to(torch.bfloat16)
    ours = torch.randn(6, 50, generator=generator).to(torch.bfloat16).requires_grad_(True)
    reference = ours.detach().clone().requires_grad_(True)
    value = losses.logit_kl(ours, teacher, 2.0, chunk_rows=chunk_rows)
    value.backward()
    _reference_kl(reference, teacher, 2.0).backward()
    assert value.dtype == torch.float32 and ours.grad.dtype == torch.bfloat16
    assert torch.allclose(value, _reference_kl(reference.detach(), teacher, 2.0), atol=1e-5)
    assert torch.allclose(ours.grad.float(), reference.grad.float(), atol=1e-3, rtol=1e-2)


def test_chunked_logit_kl_saves_no_matrix_beyond_its_inputs(generator):
    """Bounded memory: what the graph keeps for the backward pass is the two logit matrices
    themselves (no copy) and two floats per row, not float32 [N, V] softmaxes."""
    rows, vocab = 16, 300
    teacher = torch.randn(rows, vocab, generator=generator)
    ours = torch.randn(rows, vocab, generator=generator, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        losses.logit_kl(ours, teacher, 2.0, chunk_rows=4)
    inputs = {ours.data_ptr(), teacher.data_ptr()}
    large = [t for t in saved if t.numel() > rows]
    assert len(saved) == 4 and sum(t.numel() for t in saved) == 2 * rows * vocab + 2 * rows
    assert len(large) == 2 and {t.data_ptr() for t in large} == inputs
    # The unchunked reference keeps [N, V] float32 matrices of its own: the check can fail.
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _reference_kl(ours, teacher, 2.0)
    assert any(t.numel() == rows * vocab and t.data_ptr() not in inputs for t in saved)


def test_logit_kl_rejects_a_chunk_of_no_rows(generator):
    with pytest.raises(ValueError, match="chunk_rows"):
        losses.logit_kl(torch.randn(2, 3), torch.randn(2, 3), chunk_rows=0)


def test_soft_cross_entropy_of_identical_logits_is_the_teacher_entropy(generator):
    logits = torch.randn(4, 3, generator=generator)
    probs = F.softmax(logits / 2.0, -1)
    entropy = -(probs * probs.log()).sum(-1).mean()
    assert torch.allclose(losses.soft_cross_entropy(logits, logits, 2.0), entropy)


def test_mlm_cross_entropy_skips_unlabelled_positions(generator):
    logits = torch.randn(5, 7, generator=generator)
    labels = torch.tensor([3, -100, 6, -100, 0])
    keep = labels != -100
    assert torch.allclose(losses.mlm_cross_entropy(logits, labels), F.cross_entropy(logits[keep], labels[keep]))


def test_cosine_hidden_is_zero_for_parallel_states_and_one_for_orthogonal_ones():
    mask = torch.ones(1, 2)
    states = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert losses.cosine_hidden(states, 3 * states, mask).abs() < 1e-6
    orthogonal = torch.tensor([[[0.0, 1.0], [-2.0, 0.0]]])
    assert math.isclose(losses.cosine_hidden(states, orthogonal, mask).item(), 1.0, abs_tol=1e-6)


def test_cosine_hidden_ignores_padding():
    states = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    other = torch.tensor([[[1.0, 0.0], [5.0, 0.0]]])
    assert losses.cosine_hidden(states, other, torch.tensor([[1.0, 0.0]])).abs() < 1e-6


def test_soft_cross_entropy_is_the_mean_over_pairs_of_the_cross_entropy_at_the_temperature():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]])

    def hand(temperature: float) -> float:
        total = 0.0
        for s_row, t_row in zip(student.tolist(), teacher.tolist()):
            s_norm = math.log(sum(math.exp(v / temperature) for v in s_row))
            t_norm = sum(math.exp(v / temperature) for v in t_row)
            total -= sum(math.exp(t / temperature) / t_norm * (s / temperature - s_norm) for s, t in zip(s_row, t_row))
        return total / len(student)

    assert losses.soft_cross_entropy(student, teacher, 4.0).item() == pytest.approx(hand(4.0), rel=1e-6)
    assert losses.soft_cross_entropy(student, teacher).item() == pytest.approx(hand(2.0), rel=1e-6)  # default T = 2


def test_mlm_cross_entropy_over_a_given_count_is_the_summed_loss_divided_by_it(generator):
    logits = torch.randn(5, 7, generator=generator)
    labels = torch.tensor([3, -100, 6, -100, 0])
    keep = labels != -100
    summed = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    assert torch.allclose(losses.mlm_cross_entropy(logits, labels, labelled=12.0), summed / 12.0)


def test_cosine_hidden_over_a_given_count_divides_the_summed_distances_by_it():
    states = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    orthogonal = torch.tensor([[[0.0, 1.0], [-2.0, 0.0]]])
    assert math.isclose(losses.cosine_hidden(states, orthogonal, torch.ones(1, 2), tokens=4.0).item(), 0.5,
                        abs_tol=1e-6)


def _hand_relations(vectors: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """MiniLMv2's relation, one head and one query at a time: log softmax over the tokens of
    x_ri . x_rj / sqrt(d_r), padding keys at probability 0."""
    batch, length, width = vectors.shape
    size = width // heads
    out = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    for b in range(batch):
        keys = [j for j in range(length) if mask[b, j]]
        for r in range(heads):
            x = vectors[b, :, r * size:(r + 1) * size].double()
            for i in range(length):
                scores = torch.tensor([float(x[i] @ x[j]) / math.sqrt(size) for j in keys], dtype=torch.float64)
                out[b, r, i] = -math.inf
                out[b, r, i, keys] = scores - torch.logsumexp(scores, 0)
    return out


def test_self_attention_relations_are_log_softmaxes_of_scaled_dot_products_per_relation_head(generator):
    vectors = torch.randn(2, 4, 6, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    relations = losses.self_attention_relations(vectors, 3, mask)
    assert relations.shape == (2, 3, 4, 4)
    expected = _hand_relations(vectors, 3, mask)
    keys = mask.bool()[:, None, None, :].expand_as(relations)
    torch.testing.assert_close(relations[keys].double(), expected[keys], rtol=1e-5, atol=1e-5)
    assert torch.all(relations[~keys].exp() == 0)  # a padding key has probability 0


def test_attention_relation_kl_sums_the_three_relations_kl_over_heads_and_query_tokens(generator):
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    student = [torch.randn(2, 4, 6, generator=generator) for _ in range(3)]
    teacher = [torch.randn(2, 4, 12, generator=generator) for _ in range(3)]  # a wider teacher
    total = 0.0
    for s, t in zip(student, teacher):
        s_log, t_log = _hand_relations(s, 3, mask), _hand_relations(t, 3, mask)
        for b, i in ((b, i) for b in range(2) for i in range(4) if mask[b, i]):
            for r in range(3):
                keys = mask[b].bool()
                p = t_log[b, r, i, keys].exp()
                total += float((p * (t_log[b, r, i, keys] - s_log[b, r, i, keys])).sum())
    loss = losses.attention_relation_kl(student, teacher, mask, relation_heads=3)
    assert loss.item() == pytest.approx(total / (7 * 3), rel=1e-5)
    given = losses.attention_relation_kl(student, teacher, mask, relation_heads=3, tokens=14.0)
    assert given.item() == pytest.approx(total / (14 * 3), rel=1e-5)


def test_attention_relation_kl_reaches_the_students_vectors_only(generator):
    mask = torch.ones(1, 3)
    student = [torch.randn(1, 3, 4, generator=generator, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(1, 3, 4, generator=generator, requires_grad=True) for _ in range(3)]
    losses.attention_relation_kl(student, teacher, mask, relation_heads=2).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_hidden_and_attention_mse_over_given_counts_divide_the_summed_errors_by_them(generator):
    mask = _padded_mask()
    student, teacher = [torch.randn(2, 5, 4, generator=generator)], [torch.randn(2, 5, 4, generator=generator)]
    own = losses.hidden_mse(student, teacher, mask)  # over this batch's 8 tokens
    assert torch.allclose(losses.hidden_mse(student, teacher, mask, tokens=16.0), own / 2)
    maps = [torch.rand(2, 3, 5, 5, generator=generator)], [torch.rand(2, 3, 5, 5, generator=generator)]
    own = losses.attention_mse(*maps, mask)  # over this batch's 5² + 3² = 34 (query, key) pairs
    assert torch.allclose(losses.attention_mse(*maps, mask, token_pairs=68.0), own / 2)


def test_attention_mse_is_the_mean_over_the_paired_layers(generator):
    mask = torch.ones(1, 3)
    student = [torch.rand(1, 2, 3, 3, generator=generator) for _ in range(2)]
    teacher = [torch.rand(1, 2, 3, 3, generator=generator) for _ in range(2)]
    expected = sum(F.mse_loss(s, t) for s, t in zip(student, teacher)) / 2
    assert torch.allclose(losses.attention_mse(student, teacher, mask), expected)


def test_layer_losses_refuse_unequal_numbers_of_student_and_teacher_layers(generator):
    mask = torch.ones(1, 3)
    states = [torch.randn(1, 3, 4, generator=generator) for _ in range(3)]
    maps = [torch.rand(1, 2, 3, 3, generator=generator) for _ in range(3)]
    with pytest.raises(ValueError):
        losses.hidden_mse(states[:2], states, mask)
    with pytest.raises(ValueError):
        losses.attention_mse(maps, maps[:2], mask)
    with pytest.raises(ValueError):
        losses.attention_relation_kl(states, states[:2], mask, relation_heads=2)


def test_logit_kl_defaults_to_temperature_2(generator):
    student, teacher = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    assert torch.equal(losses.logit_kl(student, teacher), losses.logit_kl(student, teacher, 2.0))


@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_chunked_logit_kl_gradient_covers_every_row_when_rows_outnumber_classes(chunk_rows, generator):
    teacher = torch.randn(9, 3, generator=generator) * 3
    ours = (torch.randn(9, 3, generator=generator) * 3).requires_grad_(True)
    reference = ours.detach().clone().requires_grad_(True)
    losses.logit_kl(ours, teacher, 2.0, chunk_rows=chunk_rows).backward()
    _reference_kl(reference, teacher, 2.0).backward()
    assert torch.allclose(ours.grad, reference.grad, atol=1e-7)
