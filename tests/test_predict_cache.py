"""The teacher's XNLI prediction cache (eval/predict.py): a stale entry would give another model's,
other pairs' or other settings' predictions without a word, so the key changes with each thing the
predictions depend on (the model's files, the pairs, their labels, the settings, the torch and
transformers versions) and with nothing else; an entry is read back exactly, and replaces the older
entries of its name only. No model is built: the key reads file names, sizes and times."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from polyglot_distil.data.nli import NLIData
from polyglot_distil.eval import predict
from polyglot_distil.eval.predict import CACHE_FORMAT, cached_xnli, predict_xnli, xnli_probabilities
from polyglot_distil.fingerprints import prediction_key as _prediction_key


def prediction_key(model_path, data: NLIData, settings: dict) -> str:
    """The key `eval` computes for `model_path`'s predictions on `data` (eval/xnli.py)."""
    return _prediction_key(CACHE_FORMAT, model_path, data.premises, data.hypotheses, data.labels, settings)

SETTINGS = {"batch_size": 32, "max_length": 128, "device": "cpu", "attn_implementation": "sdpa",
            "split": "test", "lang": "fr"}


def pairs(premises=("a b", "c"), hypotheses=("c", "a b a"), labels=(0, 2)) -> NLIData:
    n = len(premises)
    return NLIData(list(premises), list(hypotheses), np.asarray(labels, dtype=np.int64), ["t"] * n, np.arange(n))


def write(path: Path, content: bytes, mtime_ns: int) -> None:
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    write(folder / "model.safetensors", b"w" * 64, 1_700_000_000_000_000_000)
    write(folder / "config.json", b'{"hidden_size": 32}', 1_700_000_000_000_000_000)
    return folder


def key(model, data=None, **settings) -> str:
    return prediction_key(str(model), data or pairs(), {**SETTINGS, **settings})


def test_the_prediction_key_is_the_same_for_the_same_model_pairs_and_settings(model):
    first = key(model)
    assert len(first) == 32 and int(first, 16) >= 0
    assert key(model) == first
    reordered = dict(reversed(list(SETTINGS.items())))  # the settings in another order
    assert prediction_key(str(model), pairs(), reordered) == first


def test_a_copy_of_the_model_with_the_same_files_listed_in_another_order_has_the_same_key(model, tmp_path,
                                                                                       monkeypatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        write(copy / name, (model / name).read_bytes(), (model / name).stat().st_mtime_ns)
    assert key(copy) == key(model)
    listed = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(listed(self))))  # another filesystem's order
    assert key(copy) == key(model)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_the_prediction_key_changes_when_a_model_file_is_touched_grown_or_renamed(model, name):
    before = key(model)
    path = model / name
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # touched: same size
    touched = key(model)
    write(path, path.read_bytes() + b" ", path.stat().st_mtime_ns)  # grown, the same time
    grown = key(model)
    path.rename(model / f"x{name}")
    assert len({before, touched, grown, key(model)}) == 4


def test_a_new_file_changes_the_prediction_key_and_a_subfolder_does_not(model):
    before = key(model)
    (model / "checkpoints").mkdir()  # a folder beside the weights holds no file the model loads
    (model / "checkpoints" / "step-1.bin").write_bytes(b"x")
    assert key(model) == before
    (model / "model-00002.safetensors").write_bytes(b"x")
    assert key(model) != before


def test_a_model_given_as_one_file_is_keyed_by_that_file(tmp_path):
    weights = tmp_path / "model.onnx"
    write(weights, b"o" * 16, 1_700_000_000_000_000_000)
    first = prediction_key(str(weights), pairs(), SETTINGS)
    assert prediction_key(str(weights), pairs(), SETTINGS) == first
    write(weights, b"o" * 17, 1_700_000_000_000_000_000)
    assert prediction_key(str(weights), pairs(), SETTINGS) != first


@pytest.mark.parametrize("other", [
    pairs(premises=("a b", "d")),  # another premise
    pairs(hypotheses=("c", "a b b")),  # another hypothesis
    pairs(premises=("a bc", "")),  # the same characters, split elsewhere
    pairs(premises=("c", "a b"), hypotheses=("a b a", "c"), labels=(2, 0)),  # the same pairs in another order
    pairs(labels=(0, 1)),  # another label
    pairs(premises=("a b", "c", "e"), hypotheses=("c", "a b a", "f"), labels=(0, 2, 1)),  # one pair more
])
def test_the_prediction_key_changes_with_the_pairs_their_order_and_their_labels(model, other):
    assert key(model, other) != key(model)


def test_the_prediction_key_takes_non_ascii_text(model):
    assert key(model, pairs(premises=("é", "c"))) != key(model, pairs(premises=("e", "c")))


@pytest.mark.parametrize("change", [{"batch_size": 16}, {"max_length": 64}, {"device": "cuda"},
                                    {"attn_implementation": "eager"}, {"split": "validation"}, {"lang": "de"}])
def test_the_prediction_key_changes_with_each_setting(model, change):
    assert key(model, **change) != key(model)


@pytest.mark.parametrize("library", ["torch", "transformers"])
def test_the_prediction_key_changes_with_the_torch_and_transformers_versions(model, monkeypatch, library):
    import importlib

    before = key(model)
    monkeypatch.setattr(importlib.import_module(library), "__version__", "0.0.1")
    assert key(model) != before


def probabilities(value: float) -> np.ndarray:
    return np.full((2, 3), value, dtype=np.float64)


def test_cached_predictions_are_computed_once_and_read_back_exactly(tmp_path):
    cache = tmp_path / "cache" / "teacher"  # made, parents too
    calls = []
    probs = np.array([[0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]])
    first, cached = cached_xnli(cache, "test-fr", "k" * 32, lambda: calls.append(1) or probs)
    assert cached is False and calls == [1] and first is probs
    assert [p.name for p in cache.iterdir()] == [f"test-fr-{'k' * 32}.npy"]
    again, cached = cached_xnli(cache, "test-fr", "k" * 32, lambda: calls.append(2) or probabilities(0))
    assert cached is True and calls == [1]
    assert again.dtype == np.float64 and np.array_equal(again, probs)


def test_a_new_key_replaces_the_older_entries_of_its_name_only(tmp_path):
    cache = tmp_path / "cache"
    old, new = "a" * 32, "b" * 32
    cached_xnli(cache, "test-fr", old, lambda: probabilities(0.1))
    cached_xnli(cache, "test-de", old, lambda: probabilities(0.2))
    cached_xnli(cache, "test-fr-x", old, lambda: probabilities(0.3))  # a name NAME-* also matches
    probs, cached = cached_xnli(cache, "test-fr", new, lambda: probabilities(0.4))
    assert cached is False and np.array_equal(probs, probabilities(0.4))
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"test-fr-{new}.npy", f"test-de-{old}.npy",
                                                              f"test-fr-x-{old}.npy"])
    for name, value in (("test-fr", 0.4), ("test-de", 0.2), ("test-fr-x", 0.3)):
        kept = new if name == "test-fr" else old
        probs, cached = cached_xnli(cache, name, kept, lambda: probabilities(9.0))
        assert cached is True and np.array_equal(probs, probabilities(value)), name


def test_the_predictions_are_the_softmax_of_the_logits_in_xnli_label_order(monkeypatch):
    calls = []
    logits = np.array([[0.0, 1.0, 2.0], [3.0, 3.0, 0.0]], dtype=np.float32)

    def predict_logits(*args):
        calls.append(args)
        return logits

    monkeypatch.setattr(predict, "predict_logits", predict_logits)
    # the model's class 0 is contradiction (2), 1 entailment (0), 2 neutral (1)
    classifier = type("Classifier", (), {"model": "model", "tokenizer": "tokenizer", "to_xnli": [2, 0, 1]})()
    data = pairs()
    probs = predict_xnli(classifier, data, 8, 16, "fr teacher", False)
    assert calls == [("model", "tokenizer", data.premises, data.hypotheses, 8, 16, "fr teacher", False)]
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    by_class = exp / exp.sum(axis=1, keepdims=True)
    assert probs.dtype == np.float64
    assert np.allclose(probs, by_class[:, [1, 2, 0]], rtol=0, atol=1e-15)
    assert np.array_equal(xnli_probabilities(classifier, logits), probs)
    predict_xnli(classifier, data)
    assert calls[-1][4:] == (32, 128, None, None)  # the defaults: batches of 32, 128 tokens


def test_a_cache_entry_holding_a_pickle_is_refused_not_unpickled(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / f"test-fr-{'k' * 32}.npy", np.array([{"run": "code"}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        cached_xnli(cache, "test-fr", "k" * 32, lambda: probabilities(0))


def test_an_old_entry_another_run_removed_first_is_no_error(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cached_xnli(cache, "test-fr", "a" * 32, lambda: probabilities(0.1))
    unlink = Path.unlink

    def removed_by_another_run_first(self, missing_ok=False):
        unlink(self, missing_ok=True)
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", removed_by_another_run_first)
    probs, cached = cached_xnli(cache, "test-fr", "b" * 32, lambda: probabilities(0.2))
    assert not cached and [p.name for p in cache.iterdir()] == [f"test-fr-{'b' * 32}.npy"]


@pytest.mark.parametrize("labels", [[0, 2], np.asarray([0, 2], dtype=np.int32), np.asarray([0, 2], dtype=np.int8)])
def test_the_same_labels_give_the_same_prediction_key_whatever_their_integer_type(model, labels):
    """Labels read by another reader (a list, an int32 column) are the same labels: the cached
    predictions are reused, not computed again under another key."""
    data = pairs()
    same = NLIData(data.premises, data.hypotheses, labels, data.sources, data.lines)
    assert prediction_key(str(model), same, SETTINGS) == key(model)
