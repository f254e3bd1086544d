"""distill.objective: the weights a run resolves, what the token-averaged terms divide by, and each
term of the objective computed from the right student and teacher tensors (the losses themselves:
test_losses.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from polyglot_distil.distill import losses
from polyglot_distil.distill.general import LossWeights
from polyglot_distil.distill.objective import batch_counts, distillation_terms, resolve_weights, weighted_sum
from polyglot_distil.distill.classifier_distillation import TaskLossWeights
from polyglot_distil.errors import UserError

B, L, H, A = 2, 4, 8, 2
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
COUNTS = {"tokens": 7.0, "token_pairs": 30.0, "masked": 6.0}  # unlike this batch's own: 5, 13 and 2 or 3


def outputs(seed: int, layers: int, classes: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = B if classes else B * L
    return {"hidden": [torch.randn(B, L, H, generator=g) for _ in range(layers + 1)],
            "attentions": [torch.rand(B, A, L, L, generator=g).softmax(-1) for _ in range(layers)],
            "logits": torch.randn(rows, classes or 11, generator=g),
            "last": torch.randn(B, L, H, generator=g),
            "qkv": [torch.randn(B, L, H, generator=g) for _ in range(3)]}


def test_resolve_weights_sets_the_given_terms_and_temperature_and_keeps_the_rest():
    base = LossWeights()
    weights = resolve_weights(base, {"hidden": 0.5, "attention": None, "mlm": 2.0, "cosine": 0}, temperature=3.0)
    assert (weights.hidden, weights.attention, weights.mlm, weights.cosine) == (0.5, 1.0, 2.0, 0)
    assert weights.temperature == 3.0
    assert (base.hidden, base.mlm, base.temperature) == (1.0, 0.0, 2.0)  # a copy: the base is unchanged
    assert resolve_weights(base, {}).temperature == 2.0
    assert resolve_weights(base, {}, temperature=0.5).temperature == 0.5  # below 1 sharpens: allowed


@pytest.mark.parametrize("given,temperature,message", [
    ({"attention": -0.1}, None, "--attention-weight must not be negative, not -0.1"),
    ({"hidden": 0, "attention": 0}, None, "every loss weight is 0: enable at least one loss (e.g. --hidden-weight 1)"),
    ({}, 0.0, "--temperature must be positive, not 0.0"),
    ({}, -1.0, "--temperature must be positive, not -1.0"),
])
def test_resolve_weights_refuses_negative_weights_no_term_and_a_non_positive_temperature(given, temperature, message):
    with pytest.raises(UserError) as error:
        resolve_weights(LossWeights(), given, temperature)
    assert str(error.value) == message


def test_batch_counts_are_the_tokens_the_squared_lengths_and_the_masked_positions():
    labels = torch.full((B, L), -100)
    labels[0, 1] = labels[1, 0] = 5
    assert batch_counts({"attention_mask": MASK, "labels": labels}) == {"tokens": 5.0, "token_pairs": 13.0,
                                                                        "masked": 2.0}
    assert batch_counts({"attention_mask": MASK, "labels": torch.tensor([0, 2])}) == {"tokens": 5.0,
                                                                                      "token_pairs": 13.0}
    assert batch_counts({"attention_mask": MASK}) == {"tokens": 5.0, "token_pairs": 13.0}


def test_phase_one_terms_compare_student_state_i_with_the_mapped_teacher_state_and_divide_by_the_counts():
    s, t = outputs(0, layers=2), outputs(1, layers=4)
    mlm_labels = torch.full((B * L,), -100)
    mlm_labels[[1, 4, 6]] = torch.tensor([3, 7, 9])
    weights = LossWeights(hidden=1, attention=1, logits=1, mlm=1, cosine=1, relation=1, relation_heads=2,
                          temperature=3.0)
    terms = distillation_terms(s, t, MASK, weights, [1, 3], mlm_labels=mlm_labels, counts=COUNTS)
    assert list(terms) == ["hidden", "attention", "logits", "mlm", "cosine", "relation"]
    expected = {
        "hidden": losses.hidden_mse(s["hidden"], [t["hidden"][0], t["hidden"][2], t["hidden"][4]], MASK, 7.0),
        "attention": losses.attention_mse(s["attentions"], [t["attentions"][1], t["attentions"][3]], MASK, 30.0),
        "logits": losses.logit_kl(s["logits"], t["logits"], 3.0, 7.0),
        "mlm": F.cross_entropy(s["logits"][[1, 4, 6]], torch.tensor([3, 7, 9]), reduction="sum") / 6.0,
        "cosine": losses.cosine_hidden(s["last"], t["last"], MASK, 7.0),
        "relation": losses.attention_relation_kl(s["qkv"], t["qkv"], MASK, 2, 7.0),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)


def test_phase_one_logits_on_masked_positions_average_over_the_masked_count():
    s, t = outputs(0, layers=2), outputs(1, layers=4)
    weights = LossWeights(hidden=0, attention=0, logits=1, logit_positions="masked")
    terms = distillation_terms(s, t, MASK, weights, [1, 3], counts=COUNTS)
    assert list(terms) == ["logits"]
    torch.testing.assert_close(terms["logits"], losses.logit_kl(s["logits"], t["logits"], 2.0, 6.0))


def test_without_counts_each_term_averages_over_its_own_batch():
    s, t = outputs(0, layers=2), outputs(1, layers=4)
    terms = distillation_terms(s, t, MASK, LossWeights(cosine=1), [1, 3])
    torch.testing.assert_close(terms["hidden"], losses.hidden_mse(
        s["hidden"], [t["hidden"][0], t["hidden"][2], t["hidden"][4]], MASK))
    torch.testing.assert_close(terms["attention"], losses.attention_mse(
        s["attentions"], [t["attentions"][1], t["attentions"][3]], MASK))
    torch.testing.assert_close(terms["cosine"], losses.cosine_hidden(s["last"], t["last"], MASK))


def test_phase_two_terms_are_soft_cross_entropy_without_t_squared_and_the_gold_label_loss():
    s, t = outputs(0, layers=2, classes=3), outputs(1, layers=4, classes=3)
    labels = torch.tensor([2, 0])
    weights = TaskLossWeights(logits=1, hidden=0, attention=0, label=1, temperature=4.0)
    terms = distillation_terms(s, t, MASK, weights, [1, 3], labels=labels, counts=COUNTS)
    assert list(terms) == ["logits", "label"]
    torch.testing.assert_close(terms["logits"], losses.soft_cross_entropy(s["logits"], t["logits"], 4.0))
    torch.testing.assert_close(terms["label"], F.cross_entropy(s["logits"], labels))


def test_a_term_the_objective_does_not_know_is_an_error():
    @dataclass
    class Unknown:
        TERMS: ClassVar[tuple[str, ...]] = ("hidden", "bogus")
        LOGIT_LOSS: ClassVar[str] = "kl"
        hidden: float = 0.0
        bogus: float = 1.0

    with pytest.raises(ValueError, match="unknown loss term 'bogus'"):
        distillation_terms(outputs(0, 2), outputs(1, 4), MASK, Unknown(), [1, 3])


def test_weighted_sum_multiplies_each_term_by_its_weight():
    weights = LossWeights(hidden=0.5, attention=0.0, mlm=2.0)
    assert weighted_sum({"hidden": torch.tensor(2.0), "mlm": torch.tensor(3.0)}, weights) == 7.0
