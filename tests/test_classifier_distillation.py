"""distill.classifier_distillation, the path phase 2 and QAT share: the teacher's classes put in the
student's order, the gold labels too, and the loss: phase 2's soft cross-entropy, QAT's the same
less the teacher's entropy (a KL: 0 for a student equal to its teacher). The pair's loading and
the dev evaluation run in test_distil_task.py and test_quantize.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyglot_distil.distill.classifier_distillation import ClassifierLoss, ClassifierPair, QATLossWeights, \
    TaskLossWeights
from polyglot_distil.models.classifier import Classifier

TEACHER_TO_XNLI, STUDENT_TO_XNLI = [2, 0, 1], [1, 2, 0]


def tiny_classifier(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.5)  # logits far apart
    config._attn_implementation = "eager"  # the attention maps the attention term compares
    return BertForSequenceClassification(config).eval()


def pair_of(teacher, student) -> ClassifierPair:
    return ClassifierPair(Classifier("teacher", teacher, None, TEACHER_TO_XNLI), student, None, STUDENT_TO_XNLI,
                          layer_map=[0, 1])


def batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 50, (4, 6), generator=g), "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": torch.tensor([0, 1, 2, 0])}


def test_the_teachers_classes_are_put_in_the_students_order():
    pair = pair_of(None, None)
    order = pair.teacher_order("cpu")
    assert [TEACHER_TO_XNLI[int(t)] for t in order] == STUDENT_TO_XNLI  # same XNLI label, class by class
    xnli = np.array([0, 1, 2, 2])
    assert [STUDENT_TO_XNLI[c] for c in pair.student_labels(xnli)] == xnli.tolist()


def test_phase_2s_logit_term_is_the_soft_cross_entropy_and_qats_the_kl():
    teacher, student = tiny_classifier(1), tiny_classifier(2)
    pair, data = pair_of(teacher, student), batch()
    with torch.no_grad():
        p = (teacher(input_ids=data["input_ids"]).logits[:, pair.teacher_order("cpu")] / 2.0).softmax(-1)
        log_q = (student(input_ids=data["input_ids"]).logits / 2.0).log_softmax(-1)
    only_logits = dict(logits=1.0, hidden=0.0, attention=0.0, label=0.0, temperature=2.0)
    _, soft_ce = ClassifierLoss(pair, TaskLossWeights(**only_logits), "cpu")(student, data)
    _, kl = ClassifierLoss(pair, QATLossWeights(**only_logits), "cpu")(student, data)
    assert soft_ce["logits"].item() == pytest.approx(-(p * log_q).sum(-1).mean().item(), rel=1e-5)
    assert kl["logits"].item() == pytest.approx((p * (p.log() - log_q)).sum(-1).mean().item(), rel=1e-4, abs=1e-7)


def test_qats_loss_of_a_student_equal_to_its_teacher_is_zero_and_phase_2s_is_the_entropy():
    model = tiny_classifier(1)
    same = ClassifierPair(Classifier("teacher", model, None, [0, 1, 2]), model, None, [0, 1, 2], layer_map=[0, 1])
    weights = dict(logits=1.0, hidden=1.0, attention=1.0, label=0.0)
    loss, terms = ClassifierLoss(same, QATLossWeights(**weights), "cpu")(model, batch())
    assert abs(loss.item()) < 1e-6 and set(terms) == {"logits", "hidden", "attention"}
    _, phase_2 = ClassifierLoss(same, TaskLossWeights(**weights), "cpu")(model, batch())
    with torch.no_grad():
        p = (model(input_ids=batch()["input_ids"]).logits / 2.0).softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean().item()
    assert entropy > 0.1 and phase_2["logits"].item() == pytest.approx(entropy, rel=1e-5)
