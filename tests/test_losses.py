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


@pytest.mark.parametrize("block_elements", [1 << 18, 22])  # one block of rows; blocks of 2 rows
def test_logit_kl_value_and_gradient_equal_autograd_through_kl_div(block_elements, generator, monkeypatch):
    monkeypatch.setattr(losses._LogitKL, "BLOCK_ELEMENTS", block_elements)
    teacher = torch.randn(6, 11, generator=generator)
    ours = torch.randn(6, 11, generator=generator, requires_grad=True)
    reference = ours.detach().clone().requires_grad_(True)
    value = losses.logit_kl(ours, teacher, 3.0)
    value.backward()
    reference_value = (F.kl_div(F.log_softmax(reference / 3.0, -1), F.log_softmax(teacher / 3.0, -1), log_target=True,
                                reduction="batchmean") * 9.0)
    reference_value.backward()
    assert torch.allclose(value, reference_value, atol=1e-6)
    assert torch.allclose(ours.grad, reference.grad, atol=1e-7)


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
