"""Classifier distillation, the part phase 2 (`distil task`) and QAT (`quantize --method qat`) share:
the teacher and student pair, the dev evaluation and the loss.

    student, tokenizer, to_xnli = ...                  # each phase loads its own student
    pair = pair_with_teacher(teacher_path, student, student_path, tokenizer, to_xnli, weights, layer_map)
    pair.teacher_to(device)
    loss = ClassifierLoss(pair, weights, device)       # the phase's loss(model, batch)
    evaluate = DevEvaluation(pair, dev, batch_size, max_length, accelerator)  # the phase's evaluate

The teacher is a 3-way NLI classifier, frozen. When its vocabulary is larger than the student's
(the teacher fine-tuned on the full multilingual model, the student trimmed), it is reduced to
the student's vocabulary with the trim's row selection (`trim_model_vocab` with `old_ids` found
by token string): both then read the same ids, and on them the reduced teacher computes exactly
what the full one does. Every student token must be in the teacher's vocabulary.

Class order: each classifier's `to_xnli[c]` is the XNLI label of its output class c (phase 2's
new head is in XNLI order; QAT's student keeps its own). The teacher's logits are put in the
student's class order (`ClassifierPair.teacher_order`) before any loss compares them, and the
gold labels too (`ClassifierPair.student_labels`).

Loss, each term with its weight (BiStil, phase 2: logits, hidden and attention 1, label 0; QAT:
attention 0):

    logits     soft cross-entropy of the student's softmax at --temperature against the teacher's
               (no T^2 factor, as in BiStil's code), mean over pairs; QAT takes the teacher's
               entropy off it (`QATLossWeights.LESS_TEACHER_ENTROPY`): KL(p_teacher || p_student),
               the same gradients, 0 when the student matches
    hidden     mean over i of MSE(student hidden state i, teacher hidden state map(i)), 0 = embeddings
    attention  mean over layers j of MSE(student attention j, teacher attention layer_map[j]), no padding
    label      cross-entropy against the gold labels

The layer map (`--layer-map`, default BiStil's: student layer j reads teacher layer 2j+1) pairs a
teacher with more layers than its student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from polyglot_distil.errors import UserError

TERMS = ("logits", "hidden", "attention", "label")


@dataclass
class TaskLossWeights:
    """The classifier distillation's term weights (see objective.py); TERMS is the order the terms
    are added in."""

    TERMS: ClassVar[tuple[str, ...]] = TERMS
    LOGIT_LOSS: ClassVar[str] = "soft_ce"  # soft cross-entropy over the classes at T, no T² (BiStil's code)
    LESS_TEACHER_ENTROPY: ClassVar[bool] = False  # True: the logit term is a KL (0 for a perfect student)

    logits: float = 1.0
    hidden: float = 1.0
    attention: float = 1.0
    label: float = 0.0
    temperature: float = 2.0

    def enabled(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TERMS if getattr(self, name) > 0}


@dataclass
class QATLossWeights(TaskLossWeights):
    """QAT's term weights: phase 2's terms, the logit term less the teacher's entropy (a KL with
    no T²), attention off by default (eager attention is slower)."""

    LESS_TEACHER_ENTROPY: ClassVar[bool] = True

    attention: float = 0.0


def weights_of(settings, base: TaskLossWeights) -> TaskLossWeights:
    """`base` with the settings' `--{term}-weight` options and `--temperature`, checked."""
    from polyglot_distil.distill.objective import resolve_weights

    given = {name: getattr(settings, f"{name}_weight") for name in TERMS}
    return resolve_weights(base, given, settings.temperature)


def attention_implementation(weights: TaskLossWeights) -> str:
    """The attention maps the attention loss compares need the eager attention."""
    return "eager" if weights.attention > 0 else "sdpa"


# ---------------------------------------------------------------------------------------------
# The pair


def reduce_to_vocabulary(teacher, teacher_vocab: list[str], student_vocab: list[str], teacher_name: str,
                         student_name: str) -> np.ndarray | None:
    """Reduce `teacher` (in place) to the student's vocabulary: old_ids[student id] = the teacher
    id of the same token string, rows selected by `trim.trim_model_vocab`. Returns old_ids, or
    None when the vocabularies are already the same."""
    from polyglot_distil.vocab.trim_model import trim_model_vocab

    if teacher_vocab == student_vocab:
        return None
    position = {}
    for i, token in enumerate(teacher_vocab):
        position.setdefault(token, i)
    missing = [t for t in student_vocab if t not in position]
    if missing:
        shown = ", ".join(repr(t) for t in missing[:3])
        raise UserError(f"the vocabularies of teacher {teacher_name} ({len(teacher_vocab):,} tokens) and student "
                        f"{student_name} ({len(student_vocab):,}) cannot be reconciled: {len(missing):,} student "
                        f"tokens are not in the teacher's ({shown}); distil from a teacher fine-tuned on the model "
                        "the student was trimmed from")
    old_ids = np.asarray([position[t] for t in student_vocab], dtype=np.int64)
    rows = teacher.get_input_embeddings().weight.shape[0]
    if old_ids.max() >= rows:
        raise UserError(f"teacher {teacher_name}: its tokenizer has ids up to {old_ids.max()} but its embedding only "
                        f"{rows:,} rows")
    trim_model_vocab(teacher, old_ids)
    return old_ids


def load_teacher(teacher_path: str, student_path: str, student_tokenizer, attn: str, trust_remote_code: bool = False,
                 dtype: Any = "float32"):
    """The teacher classifier (`models.classifier.Classifier`), frozen, on the vocabulary of the
    student (`student_path`, named in errors), in `dtype` (a torch dtype's name; None: the dtype
    it was saved in, as QAT loads its student)."""
    import torch

    from polyglot_distil.models.classifier import load_classifier
    from polyglot_distil.models.loading import same_tokenizer_files, vocab_in_id_order

    teacher = load_classifier(teacher_path, attn_implementation=attn, trust_remote_code=trust_remote_code,
                              dtype=getattr(torch, dtype) if dtype else None,
                              tokenizer=student_tokenizer if same_tokenizer_files(teacher_path, student_path) else None)
    reduce_to_vocabulary(teacher.model, vocab_in_id_order(teacher.tokenizer), vocab_in_id_order(student_tokenizer),
                         teacher_path, student_path)
    teacher.model.eval().requires_grad_(False)
    return teacher


def check_pair(teacher, student, weights: TaskLossWeights, layer_map: list[int], teacher_path: str,
               student_path: str) -> None:
    """Teacher and student go together: one family, a layer map within both, the widths and heads
    the enabled losses compare (the paths name them in the errors)."""
    from polyglot_distil.models.student import check_layers

    t, s = teacher.config, student.config
    if t.model_type != s.model_type:
        raise UserError(f"teacher {teacher_path} is a {t.model_type} model but student {student_path} a "
                        f"{s.model_type} one; distil a student from its own teacher's family")
    check_layers(layer_map, t.num_hidden_layers, s.num_hidden_layers, "--layer-map")
    if weights.hidden and s.hidden_size != t.hidden_size:
        raise UserError(f"the hidden loss compares states of equal width, but the student's hidden size is "
                        f"{s.hidden_size} and the teacher's {t.hidden_size}; pass --hidden-weight 0")
    if weights.attention and s.num_attention_heads != t.num_attention_heads:
        raise UserError(f"the attention loss compares heads one to one, but the student has {s.num_attention_heads} "
                        f"and the teacher {t.num_attention_heads}; pass --attention-weight 0")


@dataclass
class ClassifierPair:
    """A teacher and the student it trains, checked to go together. `teacher` is a frozen
    `Classifier` on the student's vocabulary; `student_to_xnli[c]` is the XNLI label of the
    student's class c; `layer_map[j]` the teacher layer student layer j learns from."""

    teacher: Any
    student: Any
    tokenizer: Any
    student_to_xnli: list[int]
    layer_map: list[int]

    def teacher_order(self, device):
        """int64[3] on `device`: the teacher's class of each student class (same XNLI label)."""
        import torch

        return torch.as_tensor(np.argsort(self.teacher.to_xnli)[self.student_to_xnli], device=device)

    def student_labels(self, xnli_labels: np.ndarray) -> np.ndarray:
        """The student's class of each XNLI label id."""
        return np.argsort(self.student_to_xnli)[xnli_labels]

    def teacher_to(self, device) -> None:
        self.teacher.model.to(device)


def pair_with_teacher(teacher_path: str, student, student_path: str, tokenizer, student_to_xnli: list[int],
                      weights: TaskLossWeights, layer_map: str | None, trust_remote_code: bool = False,
                      teacher_dtype: Any = "float32") -> ClassifierPair:
    """Load the teacher on `student`'s vocabulary (see `load_teacher`), map the layers (`layer_map`
    as given to --layer-map; None: BiStil's default) and check that the two go together."""
    from polyglot_distil.models.student import default_layer_map, parse_layers

    teacher = load_teacher(teacher_path, student_path, tokenizer, attention_implementation(weights), trust_remote_code,
                           teacher_dtype)
    layers = parse_layers(layer_map, "--layer-map") or default_layer_map(teacher.model.config.num_hidden_layers,
                                                                         student.config.num_hidden_layers)
    check_pair(teacher.model, student, weights, layers, teacher_path, student_path)
    return ClassifierPair(teacher, student, tokenizer, list(student_to_xnli), layers)


# ---------------------------------------------------------------------------------------------
# The dev evaluation


class DevEvaluation:
    """A phase's `evaluate(model, accelerator)` (phase 2, QAT): {"dev_accuracy", "dev_agreement"
    (the share of dev pairs where student and teacher agree)}. The teacher's predictions are made
    once, here; several processes each predict a share of the batches."""

    def __init__(self, pair: ClassifierPair, dev_data, batch_size: int, max_length: int, accelerator):
        from polyglot_distil.models.classifier import dev_predictions

        self.pair, self.dev, self.batch_size, self.max_length = pair, dev_data, batch_size, max_length
        self.teacher_predictions = dev_predictions(pair.teacher.model, pair.tokenizer, dev_data, pair.teacher.to_xnli,
                                                   batch_size, max_length, accelerator)

    def __call__(self, model, accelerator) -> dict[str, float]:
        from polyglot_distil.models.classifier import dev_predictions

        predicted = dev_predictions(accelerator.unwrap_model(model), self.pair.tokenizer, self.dev,
                                    self.pair.student_to_xnli, self.batch_size, self.max_length, accelerator)
        return {"dev_accuracy": float(np.mean(predicted == self.dev.labels)),
                "dev_agreement": float(np.mean(predicted == self.teacher_predictions))}


# ---------------------------------------------------------------------------------------------
# The loss


class ClassifierLoss:
    """A phase's `loss(model, batch)` (phase 2, QAT): (weighted loss, {term: scalar}) of one batch, the
    terms of the module docstring. With a `cache` (teacher_cache.TeacherCache) the teacher's
    outputs are read from it instead of computed."""

    def __init__(self, pair: ClassifierPair, weights: TaskLossWeights, device, cache=None):
        self.teacher, self.layer_map, self.weights, self.cache = pair.teacher.model, pair.layer_map, weights, cache
        self.teacher_order = pair.teacher_order(device)

    def __call__(self, model, batch: dict):
        import torch

        from polyglot_distil.data.nli_batches import model_inputs
        from polyglot_distil.distill.objective import distillation_terms, weighted_sum
        from polyglot_distil.models.encoder import classifier_outputs

        weights, inputs = self.weights, model_inputs(batch)
        hidden, attentions = weights.hidden > 0, weights.attention > 0
        s = classifier_outputs(model(**inputs, output_hidden_states=hidden, output_attentions=attentions), hidden,
                               attentions)
        with torch.no_grad():
            if self.cache is not None:  # computed once per pair, already in the student's class order
                t = self.cache.batch(batch["rows"], batch["input_ids"].shape[1], batch["input_ids"].device)
            else:
                t = classifier_outputs(self.teacher(**inputs, output_hidden_states=hidden, output_attentions=attentions),
                                       hidden, attentions)
                t["logits"] = t["logits"][:, self.teacher_order]
        terms = distillation_terms(s, t, batch["attention_mask"], weights, self.layer_map, labels=batch["labels"],
                                   counts=batch.get("counts"))
        if weights.LESS_TEACHER_ENTROPY and "logits" in terms:
            log_p = torch.log_softmax(t["logits"].float() / weights.temperature, dim=-1)
            terms["logits"] = terms["logits"] + (log_p.exp() * log_p).sum(-1).mean()
        return weighted_sum(terms, weights), terms
