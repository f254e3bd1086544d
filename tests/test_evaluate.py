"""`eval xnli`: accuracy, loyalty and confusion matrices equal a hand computation from the
models' own logits; length sorting keeps data order; bad input gives one clear line; the
report holds every figure."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPORA, SHARED_DATA, fixed_vocab, run_cli

from polyglot_distil.eval.metrics import probability_loyalty
from polyglot_distil.models.classifier import predict_logits
from polyglot_distil.data.nli import LABELS

PAIRS = 24  # per language: enough for every label to be predicted, fast on two cores


@pytest.fixture(scope="module")
def nli_dir() -> Path:
    """The real XNLI (../shared/data/xnli) when present, else the bundled sample corpora/nli."""
    real = SHARED_DATA / "xnli"
    return real if real.exists() else CORPORA / "nli"


def spread_weights(folder: Path, seed: int) -> None:
    """Give a smoke classifier larger random weights: at the default init (std 0.02) every pair
    gets the same label, and a test of accuracy or loyalty could not tell right from wrong."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1:
                scale = 1.0 if name.startswith(("classifier", "bert.pooler")) else 0.3
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    model.save_pretrained(folder)


def with_labels(source: Path, target: Path, id2label: dict[int, str]) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {str(k): v for k, v in id2label.items()}
    config["label2id"] = {v: k for k, v in id2label.items()}
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory, sample_files) -> dict[str, Path]:
    """Tiny (hidden 32, 2 layers) NLI classifiers: a student and a teacher with different weights,
    the student with its classes in another order or with generic names, and a 2-way one."""
    from polyglot_distil.models.smoke import build_smoke_model

    root = tmp_path_factory.mktemp("nli_models")
    vocab = fixed_vocab(root / "vocab.txt", sample_files)
    built = {}
    for name, seed, labels in (("student", 0, 3), ("teacher", 1, 3), ("two_way", 2, 2)):
        built[name] = build_smoke_model(root / name, "bert", vocab_file=vocab, head="sequence-classification",
                                        num_labels=labels, num_layers=2, seed=seed)
        spread_weights(built[name], seed)
    built["permuted"] = with_labels(built["student"], root / "permuted",
                                    {0: "contradiction", 1: "entailment", 2: "neutral"})
    built["generic"] = with_labels(built["student"], root / "generic", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    return built


def first_rows(nli_dir: Path, lang: str, n: int = PAIRS) -> list[list[str]]:
    lines = (nli_dir / f"test-{lang}.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[:n]]


def hand_logits(folder: Path, rows: list[list[str]]) -> np.ndarray:
    """float64[N, 3]: logits pair by pair, in file order, unpadded, straight from transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    for premise, hypothesis, _ in rows:
        encoded = tokenizer(premise, hypothesis, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**encoded).logits[0].double().numpy())
    return np.stack(out)


def hand_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def evaluate(out: Path, *args) -> dict:
    assert run_cli("eval", "xnli", "--out", out, "--no-progress", *args) == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_accuracy_loyalty_and_confusion_equal_a_hand_computation(tmp_path, models, nli_dir):
    report = evaluate(tmp_path / "out", "--model", models["student"], "--teacher", models["teacher"],
                      "--langs", "fr", "--data", nli_dir, "--max-pairs", PAIRS, "--no-efficiency")
    rows = first_rows(nli_dir, "fr")
    gold = np.array([LABELS.index(r[2]) for r in rows])
    p_student, p_teacher = (hand_softmax(hand_logits(models[m], rows)) for m in ("student", "teacher"))
    y_student, y_teacher = p_student.argmax(1), p_teacher.argmax(1)
    assert len(set(y_student)) > 1 and 0 < np.mean(y_student == y_teacher) < 1  # not a degenerate case
    m = (p_student + p_teacher) / 2
    js = 0.5 * (p_student * np.log(p_student / m)).sum(1) + 0.5 * (p_teacher * np.log(p_teacher / m)).sum(1)
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (gold, y_student), 1)

    fr = report["results"]["fr"]
    assert fr["pairs"] == len(rows)
    assert fr["accuracy"]["model"] == pytest.approx(np.mean(y_student == gold), abs=1e-12)
    assert fr["accuracy"]["teacher"] == pytest.approx(np.mean(y_teacher == gold), abs=1e-12)
    assert fr["label_loyalty"] == pytest.approx(np.mean(y_student == y_teacher), abs=1e-12)
    assert fr["probability_loyalty"] == pytest.approx(np.mean(1 - np.sqrt(js)), abs=1e-6)
    assert fr["confusion"]["model"] == confusion.tolist()
    assert report["average"]["accuracy"]["model"] == fr["accuracy"]["model"]


@pytest.mark.slow
def test_the_teacher_cache_runs_the_teacher_once_and_notices_when_it_changes(tmp_path, models, nli_dir, monkeypatch,
                                                                           capsys):
    """Students evaluated against one teacher with --teacher-cache: the teacher predicts once, the
    next evaluations read its predictions and report what an uncached run reports; new weights
    under the same path are predicted afresh (and replace the old entries)."""
    from polyglot_distil.eval import xnli

    teacher, cache = shutil.copytree(models["teacher"], tmp_path / "teacher"), tmp_path / "cache"
    calls: list[str] = []
    real = xnli.predict_xnli
    monkeypatch.setattr(xnli, "predict_xnli", lambda c, pairs, b, m, desc, p: calls.append(desc) or real(c, pairs, b, m,
                                                                                                       desc, p))
    common = ("--teacher", teacher, "--langs", "fr,sw", "--data", nli_dir, "--max-pairs", PAIRS, "--no-efficiency")

    def figures(report):
        return {lang: (r["accuracy"]["teacher"], r["label_loyalty"], r["probability_loyalty"])
                for lang, r in report["results"].items()}

    first = evaluate(tmp_path / "first", "--model", models["student"], *common, "--teacher-cache", cache)
    assert calls == ["fr model", "fr teacher", "sw model", "sw teacher"] and len(list(cache.glob("*.npy"))) == 2
    calls.clear()
    capsys.readouterr()
    cached = evaluate(tmp_path / "cached", "--model", models["permuted"], *common, "--teacher-cache", cache)
    assert calls == ["fr model", "sw model"] and "fr teacher: predictions from" in capsys.readouterr().err  # progress
    assert cached["settings"]["teacher_cache"] == str(cache)
    plain = evaluate(tmp_path / "plain", "--model", models["permuted"], *common)
    assert figures(cached) == figures(plain) and figures(first) == figures(evaluate(
        tmp_path / "plain-first", "--model", models["student"], *common))

    spread_weights(teacher, seed=5)  # the same path, other weights
    calls.clear()
    changed = evaluate(tmp_path / "changed", "--model", models["student"], *common, "--teacher-cache", cache)
    assert calls == ["fr model", "fr teacher", "sw model", "sw teacher"] and len(list(cache.glob("*.npy"))) == 2
    calls.clear()
    assert figures(changed) != figures(first)
    assert figures(changed) == figures(evaluate(tmp_path / "changed-plain", "--model", models["student"], *common))


def test_a_teacher_cache_without_a_teacher_or_on_a_file_is_one_line(tmp_path, capsys, models, nli_dir):
    common = ("eval", "xnli", "--model", models["student"], "--langs", "fr", "--data", nli_dir, "--max-pairs", 4,
              "--no-efficiency", "--no-progress")
    assert run_cli(*common, "--out", tmp_path / "a", "--teacher-cache", tmp_path / "cache") == 2
    assert "--teacher-cache keeps the teacher's predictions: give --teacher too" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run_cli(*common, "--out", tmp_path / "b", "--teacher", models["teacher"], "--teacher-cache",
                   tmp_path / "file") == 2
    assert "not a folder; give a folder" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_model_against_itself_is_fully_loyal(tmp_path, models, nli_dir):
    report = evaluate(tmp_path / "out", "--model", models["student"], "--teacher", models["student"],
                      "--langs", "fr,sw", "--data", nli_dir, "--max-pairs", PAIRS, "--no-efficiency")
    for lang in ("fr", "sw"):
        assert report["results"][lang]["label_loyalty"] == 1.0
        assert report["results"][lang]["probability_loyalty"] == pytest.approx(1.0, abs=1e-6)
    assert report["average"]["probability_loyalty"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_each_accuracy_has_an_interval_and_the_model_a_paired_test_against_the_teacher(tmp_path, models, nli_dir,
                                                                                      capsys):
    """Intervals hold their accuracy and follow the seed; the paired figures equal stats' own on the
    models' correctness; a model against itself differs by exactly 0 with p = 1; --bootstrap 0
    leaves them out; a negative count is one line."""
    from polyglot_distil.eval.stats import compare_paired

    common = ("--model", models["student"], "--langs", "fr,sw", "--data", nli_dir, "--max-pairs", PAIRS,
              "--no-efficiency", "--bootstrap", 200)
    report = evaluate(tmp_path / "a", *common, "--teacher", models["teacher"])
    gold = np.array([LABELS.index(r[2]) for r in first_rows(nli_dir, "fr")])
    correct = {m: hand_logits(models[m], first_rows(nli_dir, "fr")).argmax(1) == gold for m in ("student", "teacher")}
    fr = report["results"]["fr"]
    for role in ("model", "teacher"):
        low, high = fr["interval"][role]
        assert low <= fr["accuracy"][role] <= high and low < high
    expected = compare_paired(correct["student"], correct["teacher"], 200, seed=0)
    assert fr["paired"]["teacher"] == expected
    low, high = report["average"]["interval"]["model"]
    assert low <= report["average"]["accuracy"]["model"] <= high
    assert report["average"]["paired"]["teacher"]["only_a"] == sum(
        report["results"][lang]["paired"]["teacher"]["only_a"] for lang in ("fr", "sw"))
    reseeded = evaluate(tmp_path / "b", *common, "--teacher", models["teacher"], "--seed", 7)
    assert reseeded["results"]["fr"]["interval"] != fr["interval"]

    saved = np.load(tmp_path / "a" / "predictions.npz")
    assert np.array_equal(saved["fr/gold"], gold)
    assert np.array_equal(saved["fr/gold"] == saved["fr/model"], correct["student"])
    assert np.array_equal(saved["fr/gold"] == saved["fr/teacher"], correct["teacher"])

    itself = evaluate(tmp_path / "c", *common, "--teacher", models["student"])["results"]["fr"]["paired"]["teacher"]
    assert itself == {"difference": 0.0, "interval": [0.0, 0.0], "only_a": 0, "only_b": 0, "p_value": 1.0}
    plain = evaluate(tmp_path / "d", *common[:-1], 0, "--teacher", models["teacher"])
    assert "interval" not in plain["results"]["fr"] and "paired" not in plain["average"]
    assert run_cli("eval", "xnli", *common[:-1], -1, "--out", tmp_path / "e", "--no-progress") == 2
    assert "--bootstrap -1: give a number of resamples" in capsys.readouterr().err


def test_length_sorted_batches_give_the_one_by_one_predictions_in_data_order(models, nli_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = first_rows(nli_dir, "fr")
    tokenizer = AutoTokenizer.from_pretrained(models["student"])
    lengths = [len(tokenizer(p, h)["input_ids"]) for p, h, _ in rows]
    assert lengths != sorted(lengths, reverse=True)  # sorting really reorders these pairs
    model = AutoModelForSequenceClassification.from_pretrained(models["student"], attn_implementation="sdpa").eval()
    batched = predict_logits(model, tokenizer, [r[0] for r in rows], [r[1] for r in rows], batch_size=5,
                             progress=False)
    one_by_one = hand_logits(models["student"], rows)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    assert batched.argmax(1).tolist() == one_by_one.argmax(1).tolist()


@pytest.mark.slow
def test_output_classes_are_mapped_to_labels_through_id2label(tmp_path, models, nli_dir):
    report = evaluate(tmp_path / "out", "--model", models["permuted"], "--langs", "fr", "--data", nli_dir,
                      "--max-pairs", PAIRS, "--no-efficiency")
    rows = first_rows(nli_dir, "fr")
    class_labels = ["contradiction", "entailment", "neutral"]
    predicted = [class_labels[c] for c in hand_logits(models["permuted"], rows).argmax(1)]
    assert report["models"]["model"]["class_labels"] == class_labels
    assert report["results"]["fr"]["accuracy"]["model"] == pytest.approx(
        np.mean([p == r[2] for p, r in zip(predicted, rows)]), abs=1e-12)


@pytest.mark.slow
def test_generic_label_names_are_taken_in_xnli_order_and_the_report_says_so(tmp_path, models, nli_dir):
    out = tmp_path / "out"
    report = evaluate(out, "--model", models["generic"], "--langs", "fr", "--data", nli_dir,
                      "--max-pairs", PAIRS, "--no-efficiency")
    assert report["models"]["model"]["class_labels"] == list(LABELS)
    assert any("LABEL_0..2" in note and "assumed XNLI order" in note for note in report["notes"])
    assert "assumed XNLI order" in (out / "REPORT.md").read_text()


@pytest.mark.slow
def test_report_files_hold_every_figure(tmp_path, models, nli_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    report = evaluate(out, "--model", models["student"], "--teacher", models["teacher"], "--langs", "fr,sw",
                      "--data", nli_dir, "--max-pairs", PAIRS, "--repeats", 1)
    student = AutoModelForSequenceClassification.from_pretrained(models["student"])
    eff = report["efficiency"]
    assert eff["model"]["params_total"] == sum(p.numel() for p in student.parameters())
    assert eff["model"]["params_embedding"] == sum(
        e.weight.numel() for e in (student.bert.embeddings.word_embeddings, student.bert.embeddings.position_embeddings,
                                   student.bert.embeddings.token_type_embeddings))
    assert eff["model"]["disk_bytes"] == (models["student"] / "model.safetensors").stat().st_size
    for role in ("model", "teacher"):
        assert eff[role]["cpu_latency_ms"] > 0
        assert eff[role]["cpu_throughput_pairs_per_s"] > 0
        assert eff[role]["peak_memory_bytes"] >= 0
    latency = eff["model"]["cpu_latency_ms"] / eff["teacher"]["cpu_latency_ms"]
    assert eff["ratio"]["cpu_latency_ms"] == pytest.approx(latency)
    average = np.mean([report["results"][lang]["accuracy"]["model"] for lang in ("fr", "sw")])
    assert report["average"]["accuracy"]["model"] == pytest.approx(average)

    markdown = (out / "REPORT.md").read_text()
    fr = report["results"]["fr"]
    acc = " | ".join(f"{100 * fr['accuracy'][role]:.2f} [{100 * fr['interval'][role][0]:.2f}, "
                     f"{100 * fr['interval'][role][1]:.2f}]" for role in ("model", "teacher"))
    assert f"| fr | {fr['pairs']} | {acc} | " in markdown
    assert f"p = {fr['paired']['teacher']['p_value']:.3g} |" in markdown
    assert f"| {100 * fr['label_loyalty']:.2f} | {fr['probability_loyalty']:.4f} |" in markdown
    assert "CPU latency, 1 thread, batch 1 x 128 tokens" in markdown
    assert "natural logarithms" in markdown
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plots skipped: matplotlib is not installed" in markdown
        assert report["plots"] is None
    else:
        assert all((out / name).stat().st_size > 0 for name in report["plots"])


@pytest.mark.parametrize("row, message", [
    ("A.\tB.\n", r"test-fr\.tsv:2: 2 tab-separated columns, expected 3"),
    ("A.\tB.\tperhaps\n", r"test-fr\.tsv:2: unknown label 'perhaps'"),
])
def test_a_bad_tsv_row_is_one_line_naming_file_and_line(tmp_path, capsys, models, row, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test-fr.tsv").write_text("A.\tB.\tneutral\n" + row, encoding="utf-8")
    assert run_cli("eval", "xnli", "--model", models["student"], "--langs", "fr", "--data", tmp_path / "data",
                   "--out", tmp_path / "out", "--no-efficiency") == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_language_without_data_fails_before_any_model_work(tmp_path, capsys, nli_dir):
    # The model does not exist: the language must be what is reported, so it was checked first.
    assert run_cli("eval", "xnli", "--model", tmp_path / "no-such-model", "--langs", "fr,xx", "--data", nli_dir,
                   "--out", tmp_path / "out") == 2
    assert "no XNLI data for language 'xx'" in capsys.readouterr().err


@pytest.mark.parametrize("which, has", [("masked_lm", "a masked-LM head"), ("two_way", "a 2-way classification head")])
def test_a_model_without_a_three_way_head_says_what_it_has(tmp_path, capsys, models, tiny_bert_dir, nli_dir,
                                                             which, has):
    model = tiny_bert_dir if which == "masked_lm" else models[which]
    assert run_cli("eval", "xnli", "--model", model, "--langs", "fr", "--data", nli_dir,
                   "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"has {has}, not a 3-way sequence-classification head" in err


def test_an_existing_output_is_not_replaced_without_overwrite(tmp_path, capsys, models, nli_dir):
    (tmp_path / "out").mkdir()
    assert run_cli("eval", "xnli", "--model", models["student"], "--langs", "fr", "--data", nli_dir,
                   "--out", tmp_path / "out") == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_probability_loyalty_spans_one_minus_sqrt_ln2_to_one():
    one_hot = np.eye(3)
    assert probability_loyalty(one_hot, one_hot) == 1.0
    assert probability_loyalty(one_hot, one_hot[[1, 2, 0]]) == pytest.approx(1 - math.sqrt(math.log(2)))
