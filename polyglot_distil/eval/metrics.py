"""Metrics of an XNLI evaluation: accuracy, label and probability loyalty to a teacher, confusion
matrices. Pure numpy."""

from __future__ import annotations

import math

import numpy as np

from polyglot_distil.data.nli import LABELS


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64[N, C] probabilities from float[N, C] logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float64[N]: Jensen-Shannon divergence, natural log, in [0, ln 2], between the rows of two
    float[N, C] probability arrays (0 log 0 = 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl_to_m(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log(a) - np.log(m)), 0.0)
        return terms.sum(axis=1)

    return np.clip((kl_to_m(p) + kl_to_m(q)) / 2, 0.0, math.log(2))


def probability_loyalty(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over pairs of 1 - sqrt(JS(p, q)) (Xu et al. 2021); 1 means identical outputs."""
    return float(np.mean(1.0 - np.sqrt(js_divergence(p, q))))


def label_loyalty(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Share of pairs on which two int[N] label predictions agree."""
    return float(np.mean(np.asarray(predicted) == np.asarray(reference)))


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(gold)))


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, k: int = len(LABELS)) -> np.ndarray:
    """int64[k, k]: pairs with gold label i (row) predicted as j (column)."""
    return np.bincount(np.asarray(gold) * k + np.asarray(predicted), minlength=k * k).reshape(k, k)
