"""`distil task`: lottery-ticket sparse distillation from a fine-tuned teacher into a trimmed
student. The mask has exactly K entries; after stage 2 every body entry outside it is bitwise
theta0 (the phase-1 student); the dense model is the student plus the diff; a run interrupted in
stage 2 (or right at the switch) resumes to the same result; the teacher, reduced to the
student's vocabulary, computes what it did; the student agrees with the teacher on held-out
English NLI; each bad input gives one line.

The models: a tiny BERT (2 layers, hidden 32, a fixed WordPiece vocabulary of the bundled
samples) with spread random weights is fine-tuned on the bundled NLI pairs into the teacher; its
trim to English and Swahili (a smaller vocabulary) is the student, standing in for a phase-1
student."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPORA, SHARED_DATA, fixed_vocab, metrics_rows, redraw_encoder_matrices, run_cli
from polyglot_distil.data.nli import read_nli

TRAIN, DEV = CORPORA / "nli" / "train-en.tsv", CORPORA / "nli" / "dev-en.tsv"
STAGE = 30  # steps of each stage in the main run: 2 epochs of 15 batches of 16 pairs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, sample_files) -> Path:
    """The multilingual base: a masked-LM with its layers' matrices redrawn at std 0.1 (at the usual
    0.02 a tiny model fine-tuned on 240 pairs predicts nearly one label for everything)."""
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.models.smoke import build_smoke_model

    root = tmp_path_factory.mktemp("base")
    base = build_smoke_model(root / "base", "bert", vocab_file=fixed_vocab(root / "vocab.txt", sample_files),
                             num_layers=2)
    model = AutoModelForMaskedLM.from_pretrained(base)
    redraw_encoder_matrices(model, std=0.1)
    model.save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, base_dir) -> Path:
    """The base fine-tuned on the 240 bundled English pairs until it is confident (evaluated once,
    at the end, so best/ is the last model)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert run_cli("finetune", "--model", base_dir, "--train", TRAIN, "--dev", DEV, "--out", out, "--epochs", 30,
                   "--lr", 3e-3, "--batch-size", 16, "--max-length", 64, "--eval-every", 450, "--no-progress") == 0
    return out / "best"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, base_dir) -> Path:
    """The base trimmed to English and Swahili, as a student folder (its 2 layers copied)."""
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.vocab.count import count_corpora
    from polyglot_distil.models.loading import load_tokenizer
    from polyglot_distil.vocab.trim import trim
    from polyglot_distil.vocab.select import Rules

    root = tmp_path_factory.mktemp("student")
    languages = {lang: parse_sources([str(CORPORA / lang / "sample.txt")]) for lang in ("en", "sw")}
    counts = count_corpora(str(base_dir), languages, show_progress=False, tokenizer=load_tokenizer(base_dir))
    trim(str(base_dir), counts, ["en", "sw"], Rules(min_count=2, keep_chars=True), root / "trimmed",
         show_progress=False, log=lambda *_: None)
    assert run_cli("student", "--teacher", root / "trimmed", "--out", root / "student", "--layers", 2) == 0
    return root / "student"


def _options(teacher, student, out, *extra) -> list:
    return ["distil", "task", "--teacher", teacher, "--student", student, "--train", TRAIN,
            "--dev", DEV, "--out", out, "--full-epochs", 2, "--sparse-epochs", 2, "--batch-size", 16, "--lr", 5e-3,
            "--max-length", 64, "--save-every", 15, "--keep-checkpoints", 4, "--log-every", 1, "--no-progress", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, teacher_dir, student_dir) -> Path:
    """60 steps, 30 per stage; evaluations and checkpoints every 15."""
    out = tmp_path_factory.mktemp("task") / "run"
    assert run_cli(*_options(teacher_dir, student_dir, out)) == 0
    return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _masks(run: Path) -> dict[str, torch.Tensor]:
    extra = _load(run / "checkpoints" / f"step-{2 * STAGE}" / "extra_state.safetensors")
    return {k.removeprefix("mask."): v for k, v in extra.items() if k.startswith("mask.")}


# ---------------------------------------------------------------------------------------------
# The lottery ticket


@pytest.mark.slow
def test_the_teacher_has_the_larger_vocabulary(teacher_dir, student_dir):
    from polyglot_distil.models.loading import load_tokenizer

    assert len(load_tokenizer(student_dir)) < len(load_tokenizer(teacher_dir))  # so it is reduced


@pytest.mark.slow
def test_mask_has_exactly_k_entries_of_the_selectable_body(run_dir, student_dir):
    # Selectable: the student's encoder weights (its `bert.` tensors) but LayerNorm.
    student = _load(student_dir / "model.safetensors")
    selectable = sum(t.numel() for n, t in student.items() if n.startswith("bert.") and "LayerNorm" not in n)
    k = int(0.08 * selectable)
    masks = _masks(run_dir)
    assert sum(int(m.sum()) for m in masks.values()) == k
    assert sum(m.numel() for m in masks.values()) == selectable
    record = json.loads((run_dir / "sparse_diff" / "sparse_diff.json").read_text())
    diff = _load(run_dir / "sparse_diff" / "diff.safetensors")
    assert record["k"] == k and sum(len(diff[f"body.{n}.indices"]) for n in record["body"]) == k


@pytest.mark.slow
def test_after_stage_two_every_body_entry_outside_the_mask_is_bitwise_the_students(run_dir, student_dir):
    student = _load(student_dir / "model.safetensors")  # theta0 of the body
    masks = _masks(run_dir)
    for folder in ("final", "best"):
        trained = _load(run_dir / folder / "model.safetensors")
        moved = 0
        for name, theta0 in student.items():
            if not name.startswith("bert."):
                continue  # the masked-LM head, which the classifier does not have
            mask = masks.get(name, torch.zeros_like(theta0, dtype=torch.bool))  # LayerNorm: never trained
            assert torch.equal(trained[name][~mask], theta0[~mask]), (folder, name)
            moved += int((trained[name][mask] != theta0[mask]).sum())
        assert moved > 0.5 * sum(int(m.sum()) for m in masks.values())  # the chosen entries did train


@pytest.mark.slow
def test_theta0_in_checkpoints_is_the_student_and_a_seeded_head(run_dir, student_dir):
    from polyglot_distil.models.classifier import new_classifier

    extra = _load(run_dir / "checkpoints" / f"step-{STAGE}" / "extra_state.safetensors")
    assert not any(k.startswith("mask.") for k in extra)  # before the switch: no mask yet
    fresh, new = new_classifier(str(student_dir), seed=0)
    expected = dict(fresh.named_parameters())
    theta0 = {k.removeprefix("theta0."): v for k, v in extra.items() if k.startswith("theta0.")}
    assert sorted(new) == sorted(n for n in theta0 if not n.startswith("bert.") or ".pooler." in n)
    assert all(torch.equal(theta0[n], expected[n].detach()) for n in theta0)
    final = _load(run_dir / "final" / "model.safetensors")
    assert not torch.equal(final["classifier.weight"], theta0["classifier.weight"])  # the head trained


@pytest.mark.slow
def test_dense_model_is_the_phase1_student_plus_the_diff(tmp_path, run_dir, student_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rebuilt"
    assert run_cli("apply-diff", "--student", student_dir, "--diff", run_dir / "sparse_diff", "--out", out) == 0
    expected, rebuilt = _load(run_dir / "best" / "model.safetensors"), _load(out / "model.safetensors")
    assert expected.keys() == rebuilt.keys()
    assert all(torch.equal(expected[k], rebuilt[k]) for k in expected)
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((run_dir / "best" / "config.json").read_text())
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label[2] == "contradiction"


@pytest.mark.slow
def test_the_rebuilt_model_has_a_model_card(tmp_path, run_dir, student_dir):
    out = tmp_path / "rebuilt"
    assert run_cli("apply-diff", "--student", student_dir, "--diff", run_dir / "sparse_diff", "--out", out) == 0
    card = (out / "README.md").read_text(encoding="utf-8")
    k = json.loads((run_dir / "sparse_diff" / "sparse_diff.json").read_text())["k"]
    assert str(student_dir) in card and f"{k:,}" in card and "bit for bit" in card


def _one_line_error(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_a_truncated_diff_is_one_line_naming_the_file(tmp_path, capsys, run_dir, student_dir):
    import shutil

    diff = tmp_path / "sparse_diff"
    shutil.copytree(run_dir / "sparse_diff", diff)
    data = (diff / "diff.safetensors").read_bytes()
    (diff / "diff.safetensors").write_bytes(data[: len(data) // 2])
    err = _one_line_error(capsys, "apply-diff", "--student", student_dir, "--diff", diff, "--out", tmp_path / "out")
    assert "diff.safetensors cannot be read" in err and "cut short" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_apply_diff_on_a_base_of_another_vocabulary_is_one_line(tmp_path, capsys, run_dir, base_dir):
    err = _one_line_error(capsys, "apply-diff", "--student", base_dir, "--diff", run_dir / "sparse_diff",
                          "--out", tmp_path / "out")
    assert f"--student {base_dir}" in err and "--student" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_metrics_rows_carry_their_stage_and_the_schedule_restarts(run_dir):
    train = metrics_rows(run_dir, "train")
    assert [r["stage"] for r in train] == ["full"] * STAGE + ["sparse"] * STAGE
    # The rate a row logs is the next step's: each stage decays linearly from 5e-3 to 0.
    next_lr = [r["lr"] for r in train]
    assert next_lr[STAGE - 2] == pytest.approx(5e-3 / STAGE)  # step 30, the last of stage 1
    assert next_lr[STAGE - 1] == pytest.approx(5e-3)  # step 31: a fresh schedule
    assert next_lr[-2] == pytest.approx(5e-3 / STAGE)
    evals = metrics_rows(run_dir, "eval")
    assert [(r["step"], r["stage"]) for r in evals] == [(15, "full"), (30, "full"), (45, "sparse"), (60, "sparse")]
    assert all({"dev_accuracy", "dev_agreement"} <= set(r) for r in evals)


@pytest.mark.slow
def test_best_is_the_best_dev_accuracy_of_stage_two(run_dir):
    best = json.loads((run_dir / "best" / "best.json").read_text())
    sparse = [r for r in metrics_rows(run_dir, "eval") if r["stage"] == "sparse"]
    top = max(r["dev_accuracy"] for r in sparse)
    assert best["step"] == next(r["step"] for r in sparse if r["dev_accuracy"] == top)


@pytest.mark.slow
@pytest.mark.parametrize("from_step", [45, 30], ids=["in-stage-2", "at-the-switch"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, run_dir, teacher_dir, student_dir, from_step):
    out = tmp_path / "interrupted"
    shutil.copytree(run_dir, out)
    for step in range(from_step + 15, 2 * STAGE + 1, 15):
        shutil.rmtree(out / "checkpoints" / f"step-{step}")
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "sparse_diff")
    if json.loads((out / "best" / "best.json").read_text())["step"] > from_step:
        shutil.rmtree(out / "best")  # not yet written when the run stopped
    assert run_cli(*_options(teacher_dir, student_dir, out, "--resume")) == 0
    for path in ("final/model.safetensors", "best/model.safetensors", "sparse_diff/diff.safetensors"):
        expected, resumed = _load(run_dir / path), _load(out / path)
        assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected), path
    assert metrics_rows(out, "train") == metrics_rows(run_dir, "train")


@pytest.mark.slow
def test_reduce_vocab_saves_bitwise_the_models_and_diff_of_full_training(tmp_path, run_dir, teacher_dir, student_dir,
                                                                        capsys):
    """--reduce-vocab trains only the embedding rows the training pairs use; phase 2 has no weight
    decay, so the other rows never move in full training either: the same K, the same mask (the
    embedding's entries among them) and bitwise the same best/, final/ and sparse diff; resumed
    from the switch, too."""
    out = tmp_path / "reduced"
    assert run_cli(*_options(teacher_dir, student_dir, out, "--reduce-vocab")) == 0
    used, rows = (int(n.replace(",", "")) for n in
                  capsys.readouterr().err.split("training ", 1)[1].split(" embedding rows")[0].split(" of the "))
    assert 0 < used < rows  # the English pairs leave Swahili rows unused
    for path in ("final/model.safetensors", "best/model.safetensors", "sparse_diff/diff.safetensors"):
        expected, reduced = _load(run_dir / path), _load(out / path)
        assert expected.keys() == reduced.keys() and all(torch.equal(expected[k], reduced[k]) for k in expected), path
    assert any("word_embeddings" in k for k in _load(out / "sparse_diff" / "diff.safetensors"))
    assert metrics_rows(out, "eval") == metrics_rows(run_dir, "eval")
    resumed = tmp_path / "resumed"  # from the checkpoint at the switch: the restricted table and full ticket
    shutil.copytree(out, resumed)
    for name in ("checkpoints/step-45", "checkpoints/step-60", "final", "sparse_diff", "best"):
        shutil.rmtree(resumed / name)
    assert run_cli(*_options(teacher_dir, student_dir, resumed, "--reduce-vocab", "--resume")) == 0
    for path in ("final/model.safetensors", "sparse_diff/diff.safetensors"):
        assert (resumed / path).read_bytes() == (out / path).read_bytes(), path


@pytest.mark.slow  # the fine-tuned teacher fixture costs seconds
def test_reduce_vocab_with_frozen_embeddings_is_one_line(capsys, tmp_path, teacher_dir, student_dir):
    _fails_with(capsys, "--exclude-embeddings freezes them all",
                *_options(teacher_dir, student_dir, tmp_path / "out", "--reduce-vocab", "--exclude-embeddings"))


# ---------------------------------------------------------------------------------------------
# The teacher on the student's vocabulary


@pytest.mark.slow
def test_reduced_teacher_computes_on_student_ids_what_it_computed_on_its_own(teacher_dir, student_dir):
    from polyglot_distil.distill.classifier_distillation import reduce_to_vocabulary
    from polyglot_distil.models.classifier import load_classifier
    from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order

    full, reduced = (load_classifier(teacher_dir, attn_implementation="eager") for _ in range(2))
    student_tokenizer = load_tokenizer(student_dir)
    old_ids = reduce_to_vocabulary(reduced.model, vocab_in_id_order(reduced.tokenizer),
                                   vocab_in_id_order(student_tokenizer), "teacher", "student")
    dev = read_nli(DEV)
    compared = 0
    for premise, hypothesis in zip(dev.premises, dev.hypotheses):
        mine = student_tokenizer(premise, hypothesis, return_tensors="pt")
        theirs = full.tokenizer(premise, hypothesis, return_tensors="pt")
        if not torch.equal(torch.as_tensor(old_ids)[mine["input_ids"]], theirs["input_ids"]):
            continue  # a word the trim dropped: not the same text for the two
        with torch.no_grad():
            assert torch.equal(reduced.model(**mine).logits, full.model(**theirs).logits)
        compared += 1
    assert compared >= 40


@pytest.fixture(scope="module")
def xnli_run(tmp_path_factory, teacher_dir, student_dir) -> Path:
    """Distillation on the 2,490 English XNLI dev pairs (their labels unused). Density 0.3: a
    50k-parameter student needs a denser ticket than BiStil's 8% to follow the teacher in 300 steps."""
    dev_en = SHARED_DATA / "xnli" / "dev-en.tsv"
    if not dev_en.exists():
        pytest.skip(f"needs {dev_en}")
    out = tmp_path_factory.mktemp("xnli") / "run"
    assert run_cli("distil", "task", "--teacher", teacher_dir, "--student", student_dir, "--train", dev_en,
                   "--dev", DEV, "--out", out, "--full-epochs", 2, "--sparse-epochs", 2, "--batch-size", 32,
                   "--lr", 5e-3, "--max-length", 64, "--density", 0.3, "--no-progress") == 0
    return out


@pytest.mark.slow
def test_student_agrees_with_the_teacher_on_heldout_english_nli(xnli_run, teacher_dir):
    from polyglot_distil.eval.predict import predict_xnli
    from polyglot_distil.models.classifier import load_classifier

    heldout = read_nli(SHARED_DATA / "xnli" / "test-en.tsv").select(range(600))
    teacher = predict_xnli(load_classifier(teacher_dir), heldout, max_length=64).argmax(1)
    student = predict_xnli(load_classifier(xnli_run / "best"), heldout, max_length=64).argmax(1)
    agreement = np.mean(student == teacher)
    assert agreement > 0.6  # chance: about 1/3
    majority = np.bincount(teacher, minlength=3).max() / len(teacher)
    assert agreement > majority + 0.1  # well above what the best constant guess gets


# ---------------------------------------------------------------------------------------------
# Bad input


def _fails_with(capsys, message: str, *args) -> None:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


@pytest.mark.slow
def test_teacher_with_another_label_set_is_an_error(capsys, tmp_path, teacher_dir, student_dir):
    teacher = tmp_path / "sentiment"
    shutil.copytree(teacher_dir, teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "neutral", "2": "negative"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (teacher / "config.json").write_text(json.dumps(config))
    _fails_with(capsys, "are not entailment, neutral, contradiction", *_options(teacher, student_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_teacher_without_a_classification_head_is_an_error(capsys, tmp_path, base_dir, student_dir):
    _fails_with(capsys, "fine-tune it on NLI first", *_options(base_dir, student_dir, tmp_path / "out"))


@pytest.mark.slow
def test_vocabularies_that_cannot_be_reconciled_are_an_error(capsys, tmp_path, teacher_dir, tiny_bert_dir):
    # Another WordPiece vocabulary (trained, not fixed): some of its tokens are not the teacher's.
    _fails_with(capsys, "cannot be reconciled", *_options(teacher_dir, tiny_bert_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_k_larger_than_the_selectable_parameters_is_an_error(capsys, tmp_path, teacher_dir, student_dir):
    _fails_with(capsys, "more than the", *_options(teacher_dir, student_dir, tmp_path / "out",
                                                   "--sparse-params", 10**9))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_label_in_the_task_data_names_file_and_line(capsys, tmp_path, teacher_dir, student_dir):
    bad = tmp_path / "dev.tsv"
    lines = DEV.read_text(encoding="utf-8").splitlines()[:6]
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\tunsure"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = _options(teacher_dir, student_dir, tmp_path / "out")
    options[options.index("--dev") + 1] = bad
    _fails_with(capsys, f"{bad}:5: unknown label 'unsure'", *options)


@pytest.mark.slow
def test_a_student_that_is_already_a_classifier_is_an_error(capsys, tmp_path, teacher_dir):
    _fails_with(capsys, "is already a sequence classifier", *_options(teacher_dir, teacher_dir, tmp_path / "out"))


def permuted_teacher(teacher_dir: Path, folder: Path, order: list[int]) -> Path:
    """The same classifier with its output classes stored in another order: class c of the copy is
    class order[c] of the original (head rows permuted, id2label with them)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(teacher_dir, folder)
    weights = load_file(folder / "model.safetensors")
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name][order].contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    labels = {int(k): v for k, v in config["id2label"].items()}
    config["id2label"] = {str(c): labels[o] for c, o in enumerate(order)}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_a_teacher_in_another_class_order_teaches_the_same_student(tmp_path, teacher_dir, student_dir):
    """The teacher's class order is reconciled with the data's: a teacher whose id2label is in
    another order (the same function) gives bitwise the same student, and the same predictions."""
    permuted = permuted_teacher(teacher_dir, tmp_path / "permuted", [2, 0, 1])
    short = ["--full-epochs", 0.25, "--sparse-epochs", 0.25, "--save-every", 100, "--eval-every", 4]
    for teacher, out in ((teacher_dir, tmp_path / "plain"), (permuted, tmp_path / "reordered")):
        assert run_cli(*_options(teacher, student_dir, out), *short) == 0
    assert torch.equal(torch.cat([t.flatten() for t in _load(tmp_path / "plain" / "best" / "model.safetensors").values()]),
                       torch.cat([t.flatten() for t in _load(tmp_path / "reordered" / "best" / "model.safetensors").values()]))
    plain, reordered = metrics_rows(tmp_path / "plain", "eval"), metrics_rows(tmp_path / "reordered", "eval")
    assert [r["dev_agreement"] for r in plain] == [r["dev_agreement"] for r in reordered]


@pytest.mark.slow
def test_the_teacher_cache_serves_what_the_teacher_computes(tmp_path, teacher_dir, student_dir, capsys):
    """--teacher-cache: the first run builds it, the losses match an uncached run (float16 storage:
    to about 1e-3), and a second run (another student row, a resume) reuses it without rebuilding."""
    short = ["--full-epochs", 0.2, "--sparse-epochs", 0.2, "--log-every", 1, "--save-every", 100, "--eval-every", 100]
    cache = tmp_path / "cache"
    assert run_cli(*_options(teacher_dir, student_dir, tmp_path / "plain"), *short) == 0
    assert run_cli(*_options(teacher_dir, student_dir, tmp_path / "cached"), *short, "--teacher-cache", cache) == 0
    assert "teacher cache:" in capsys.readouterr().err
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["pairs"] == 240 and meta["hidden"] == [0, 1, 2] and meta["attention"] == [0, 1]
    plain, cached = metrics_rows(tmp_path / "plain", "train"), metrics_rows(tmp_path / "cached", "train")
    assert len(plain) == len(cached) > 2
    for a, b in zip(plain[:1], cached[:1]):  # step 1: the same student, so only the teacher's storage differs
        for term in ("logits", "hidden", "attention"):
            assert b[term] == pytest.approx(a[term], rel=5e-3), term
    built = (cache / "cache.json").stat().st_mtime_ns
    assert run_cli(*_options(teacher_dir, student_dir, tmp_path / "again"), *short, "--teacher-cache", cache) == 0
    assert "teacher cache:" not in capsys.readouterr().err and (cache / "cache.json").stat().st_mtime_ns == built
