"""XNLI predictions of a loaded classifier: logits in data order, probabilities in XNLI's label
order (entailment, neutral, contradiction)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from polyglot_distil.data.nli import NLIData
from polyglot_distil.eval.metrics import softmax
from polyglot_distil.models.classifier import Classifier, predict_logits
from polyglot_distil.outputs import replace_file


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


CACHE_FORMAT = "polyglot-distil xnli predictions 1"


def cached_xnli(cache_dir: str | os.PathLike, name: str, key: str, predict) -> tuple[np.ndarray, bool]:
    """(`predict()`'s probabilities, whether they came from CACHE_DIR): read from
    CACHE_DIR/NAME-KEY.npy when there, else computed and kept there (replacing NAME's older
    entries, made for other files, data or settings)."""
    folder = Path(cache_dir)
    target = folder / f"{name}-{key}.npy"
    if target.is_file():
        return np.load(target, allow_pickle=False), True
    probs = predict()
    folder.mkdir(parents=True, exist_ok=True)
    replace_file(target, lambda handle: np.save(handle, probs, allow_pickle=False))
    for old in folder.glob(f"{name}-*.npy"):
        if old != target and len(old.stem) == len(target.stem):
            old.unlink(missing_ok=True)
    return probs, False
