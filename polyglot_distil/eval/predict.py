"""XNLI predictions of a loaded classifier: logits in data order, probabilities in XNLI's label
order (entailment, neutral, contradiction)."""

from __future__ import annotations

import numpy as np

from polyglot_distil.data.nli import NLIData
from polyglot_distil.eval.metrics import softmax
from polyglot_distil.models.classifier import Classifier, predict_logits


def xnli_probabilities(classifier: Classifier, logits: np.ndarray) -> np.ndarray:
    """float64[N, 3]: softmax of `logits` (float[N, 3], model class order) in `LABELS` order."""
    probs = softmax(logits)
    return probs[:, np.argsort(classifier.to_xnli)]


def predict_xnli(classifier: Classifier, data: NLIData, batch_size: int = 32, max_length: int = 128,
                 desc: str | None = None, progress: bool | None = None) -> np.ndarray:
    """float64[N, 3]: each pair's label probabilities in `LABELS` order, in data order."""
    logits = predict_logits(classifier.model, classifier.tokenizer, data.premises, data.hypotheses,
                            batch_size, max_length, desc, progress)
    return xnli_probabilities(classifier, logits)
