"""The one distillation objective of both phases: term weights, the teacher-layer mapping, and the
weighted sum of the hidden, attention, logit, MLM, cosine, label and (MiniLMv2) relation terms.

Both phases describe their losses with a weights dataclass (`general.LossWeights`,
`classifier_distillation.TaskLossWeights`) whose `TERMS` give the terms in the order they are added, and whose
`LOGIT_LOSS` says what the logit term is: "kl" (phase 1: KL over the MLM vocabulary, x T²) or
"soft_ce" (phase 2: soft cross-entropy over the classes, no T², as BiStil's code). The student's
and teacher's outputs come as dicts ("hidden", "attentions", "logits", "last"), from
`models.encoder.encoder_outputs` or `classifier_outputs`.

Where to add a loss: a function in `losses.py`, a weight in the phase's dataclass and its `TERMS`,
and one branch in `distillation_terms`.
"""

from __future__ import annotations

from dataclasses import asdict

from polyglot_distil.errors import UserError

IGNORE_INDEX = -100  # labels of tokens that are not masked (as data.mlm)


def resolve_weights(base, given: dict, temperature: float | None = None):
    """A copy of the weights `base` with the `given` {term: weight} (None: keep the base's) and the
    temperature, checked: no negative weight, at least one term on, a positive temperature."""
    weights = type(base)(**asdict(base))
    for name in type(base).TERMS:
        value = given.get(name)
        if value is None:
            continue
        if value < 0:
            raise UserError(f"--{name}-weight must not be negative, not {value}")
        setattr(weights, name, value)
    if temperature is not None:
        weights.temperature = temperature
    if not weights.enabled():
        example = type(base).TERMS[0]
        raise UserError(f"every loss weight is 0: enable at least one loss (e.g. --{example}-weight 1)")
    if not weights.temperature > 0:
        raise UserError(f"--temperature must be positive, not {weights.temperature}")
    return weights


def batch_counts(batch: dict) -> dict[str, float]:
    """What the token-averaged terms average over, counted on a (global) batch: "tokens" (not
    padding), "token_pairs" (the attention loss's (query, key) pairs: the sum over rows of
    length²) and, for masked-LM batches (labels [B, L]), "masked" (the labelled positions)."""
    lengths = batch["attention_mask"].sum(1)
    counts = {"tokens": float(lengths.sum()), "token_pairs": float((lengths * lengths).sum())}
    labels = batch.get("labels")
    if labels is not None and labels.ndim == 2:
        counts["masked"] = float((labels != IGNORE_INDEX).sum())
    return counts


def distillation_terms(s: dict, t: dict, mask, weights, layer_map: list[int], *, mlm_labels=None,
                       labels=None, counts: dict | None = None) -> dict:
    """{term: scalar} for every enabled term, in the order of `weights.TERMS`.

    Hidden state i of the student (0 = embedding output) is compared with the teacher's hidden
    state after layer `layer_map[i-1]` (BiStil: 2i), attention map j with the teacher's layer
    `layer_map[j]` (2j+1). `mlm_labels` are the labels at the student's logit rows (phase 1),
    `labels` the gold classes (phase 2). `counts` (`batch_counts` of the global batch, divided by
    the micro-batches it is cut into) are what the token-averaged terms divide by, so that
    micro-batches average to the global batch's mean; without them, this batch's own counts."""
    import torch.nn.functional as F

    from polyglot_distil.distill import losses
    from polyglot_distil.models.student import hidden_state_pairs

    counts = counts or {}
    terms = {}
    for name in type(weights).TERMS:
        if not getattr(weights, name):
            continue
        if name == "hidden":
            pairs = hidden_state_pairs(layer_map)
            terms[name] = losses.hidden_mse([s["hidden"][i] for i, _ in pairs], [t["hidden"][k] for _, k in pairs],
                                            mask, counts.get("tokens"))
        elif name == "attention":
            terms[name] = losses.attention_mse(s["attentions"], [t["attentions"][k] for k in layer_map], mask,
                                               counts.get("token_pairs"))
        elif name == "logits" and type(weights).LOGIT_LOSS == "kl":
            rows = counts.get("tokens" if weights.logit_positions == "all" else "masked")
            terms[name] = losses.logit_kl(s["logits"], t["logits"], weights.temperature, rows)
        elif name == "logits":  # a mean over pairs, and micro-batches hold equal numbers of pairs
            terms[name] = losses.soft_cross_entropy(s["logits"], t["logits"], weights.temperature)
        elif name == "mlm":
            masked = mlm_labels != IGNORE_INDEX  # with the logit loss, rows are every token: keep the masked ones
            terms[name] = losses.mlm_cross_entropy(s["logits"][masked], mlm_labels[masked], counts.get("masked"))
        elif name == "cosine":
            terms[name] = losses.cosine_hidden(s["last"], t["last"], mask, counts.get("tokens"))
        elif name == "label":
            terms[name] = F.cross_entropy(s["logits"].float(), labels)
        elif name == "relation":  # MiniLMv2: one teacher layer's q/k/v relations, the student's last layer's
            terms[name] = losses.attention_relation_kl(s["qkv"], t["qkv"], mask, weights.relation_heads,
                                                       counts.get("tokens"))
        else:
            raise ValueError(f"unknown loss term {name!r}")
    return terms


def weighted_sum(terms: dict, weights):
    """The loss: each term times its weight, added in the order of `weights.TERMS`."""
    return sum(getattr(weights, name) * term for name, term in terms.items())
