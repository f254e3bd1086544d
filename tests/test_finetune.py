"""`finetune`: a masked-LM or bare checkpoint becomes a 3-way NLI classifier folder, the best model
is the one with the highest dev accuracy (and has it), an existing NLI classifier keeps its class
order, resume reproduces a plain run, the batches are a pure function of their number, and bad
input ends with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import CORPORA, metrics_rows, run_cli, saved_weights
from polyglot_distil.data.nli import LABELS, read_nli

TRAIN, DEV = CORPORA / "nli" / "train-en.tsv", CORPORA / "nli" / "dev-en.tsv"
RUN = ("--epochs", 2, "--batch-size", 16, "--lr", 1e-3, "--max-length", 64, "--save-every", 15, "--log-every", 1,
       "--keep-checkpoints", 3, "--no-progress")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def finetune(model, out, *extra) -> int:
    return run_cli("finetune", "--model", model, "--train", TRAIN, "--dev", DEV, "--out", out,
                   *RUN, *extra)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert_dir):
    """2 epochs of 15 steps on the tiny BERT masked-LM checkpoint: evaluations and checkpoints at
    steps 15 and 30."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    assert finetune(tiny_bert_dir, out) == 0
    return out


@pytest.mark.slow
def test_masked_lm_checkpoint_becomes_an_nli_classifier_folder(run_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for folder in (run_dir / "best", run_dir / "final"):
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        assert [model.config.id2label[i] for i in range(3)] == list(LABELS)
        encoded = AutoTokenizer.from_pretrained(folder)(["A man sleeps."], ["Nobody sleeps."], return_tensors="pt")
        assert model(**encoded).logits.shape == (1, 3)
        assert json.loads((folder / "training.json").read_text())["train_pairs"] == 240


@pytest.mark.slow
def test_bare_encoder_checkpoint_gets_a_new_head_too(tmp_path, sample_files):
    from transformers import AutoConfig

    from polyglot_distil.models.smoke import build_smoke_model

    bare = build_smoke_model(tmp_path / "bare", "bert", texts=sample_files, vocab_size=300, num_layers=1, head="base")
    assert finetune(bare, tmp_path / "run", "--epochs", 0.5) == 0
    config = AutoConfig.from_pretrained(tmp_path / "run" / "best")
    assert config.architectures == ["BertForSequenceClassification"] and config.num_labels == 3


@pytest.mark.slow
def test_metrics_have_every_step_and_one_dev_accuracy_per_epoch(run_dir):
    assert [r["step"] for r in metrics_rows(run_dir, "train")] == list(range(1, 31))
    evals = metrics_rows(run_dir, "eval")
    assert [r["step"] for r in evals] == [15, 30]
    assert all(0 <= r["dev_accuracy"] <= 1 for r in evals)


@pytest.mark.slow
def test_best_is_the_evaluation_with_the_highest_dev_accuracy_and_has_it(run_dir):
    from polyglot_distil.eval.predict import predict_xnli
    from polyglot_distil.models.classifier import load_classifier

    evals = metrics_rows(run_dir, "eval")
    best = json.loads((run_dir / "best" / "best.json").read_text())
    top = max(r["dev_accuracy"] for r in evals)
    assert best["step"] == next(r["step"] for r in evals if r["dev_accuracy"] == top)
    dev = read_nli(DEV)
    predicted = predict_xnli(load_classifier(run_dir / "best"), dev, max_length=64).argmax(1)
    assert np.mean(predicted == dev.labels) == pytest.approx(best["dev_accuracy"])
    # and independently of that path: one pair at a time, transformers alone, the saved id2label
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "best")
    right = 0
    for line in DEV.read_text(encoding="utf-8").splitlines():
        premise, hypothesis, gold = line.split("\t")
        with torch.no_grad():
            logits = model(**tokenizer(premise, hypothesis, truncation=True, max_length=64, return_tensors="pt")).logits
        right += model.config.id2label[int(logits.argmax())] == gold
    assert right / len(DEV.read_text(encoding="utf-8").splitlines()) == pytest.approx(best["dev_accuracy"], abs=1e-12)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, run_dir, tiny_bert_dir):
    out = tmp_path / "interrupted"
    shutil.copytree(run_dir, out)
    shutil.rmtree(out / "checkpoints" / "step-30")
    shutil.rmtree(out / "final")
    assert finetune(tiny_bert_dir, out, "--resume") == 0
    expected, resumed = saved_weights(run_dir / "final"), saved_weights(out / "final")
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert metrics_rows(out, "train") == metrics_rows(run_dir, "train")


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, run_dir):
    """The fine-tuned classifier, and the same function with its classes in another order (rows
    of the output layer permuted with id2label)."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("classifiers")
    plain = root / "plain"
    shutil.copytree(run_dir / "final", plain)
    model = AutoModelForSequenceClassification.from_pretrained(plain)
    order = [2, 0, 1]  # class c of the permuted model is XNLI label order[c]
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    model.config.id2label = {c: LABELS[label] for c, label in enumerate(order)}
    model.config.label2id = {name: c for c, name in model.config.id2label.items()}
    permuted = root / "permuted"
    model.save_pretrained(permuted)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (plain / name).exists():
            shutil.copyfile(plain / name, permuted / name)
    return {"plain": plain, "permuted": permuted, "order": order}


@pytest.mark.slow
def test_existing_nli_classifier_keeps_its_class_order_and_learns_the_same(tmp_path, classifiers):
    from polyglot_distil.eval.predict import predict_xnli
    from polyglot_distil.models.classifier import load_classifier

    for name in ("plain", "permuted"):
        assert finetune(classifiers[name], tmp_path / name, "--epochs", 1) == 0
    config = json.loads((tmp_path / "permuted" / "final" / "config.json").read_text())
    assert [config["id2label"][str(c)] for c in range(3)] == [LABELS[i] for i in classifiers["order"]]
    dev = read_nli(DEV)
    plain, permuted = (predict_xnli(load_classifier(tmp_path / name / "final"), dev, max_length=64)
                       for name in ("plain", "permuted"))
    assert np.abs(plain - permuted).max() < 1e-4  # in XNLI order: the same probabilities


@pytest.mark.slow
def test_generic_label_names_are_taken_in_xnli_order_and_written_out(tmp_path, run_dir):
    generic = tmp_path / "generic"
    shutil.copytree(run_dir / "final", generic)
    config = json.loads((generic / "config.json").read_text())
    config["id2label"] = {str(c): f"LABEL_{c}" for c in range(3)}
    config["label2id"] = {f"LABEL_{c}": c for c in range(3)}
    (generic / "config.json").write_text(json.dumps(config))
    assert finetune(generic, tmp_path / "run", "--epochs", 0.5) == 0
    written = json.loads((tmp_path / "run" / "final" / "config.json").read_text())["id2label"]
    assert [written[str(c)] for c in range(3)] == list(LABELS)


def test_max_train_examples_takes_a_seeded_sample_in_source_order():
    from polyglot_distil.distill.finetune import read_task_data

    first, _ = read_task_data([str(TRAIN)], [str(DEV)], 100, seed=0)
    again, _ = read_task_data([str(TRAIN)], [str(DEV)], 100, seed=0)
    other, _ = read_task_data([str(TRAIN)], [str(DEV)], 100, seed=1)
    assert len(first) == 100 and list(first.lines) == sorted(first.lines)
    assert list(first.lines) == list(again.lines) and list(first.lines) != list(other.lines)


def test_batches_cover_an_epoch_without_repeats_and_depend_only_on_seed_and_number(tiny_bert_dir):
    from polyglot_distil.data.nli_batches import NLIBatches, encode_pairs
    from polyglot_distil.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    data = read_nli(TRAIN)
    pairs = encode_pairs(tokenizer, data, 64, progress=False)
    batches = NLIBatches(pairs, data.labels, 16, seed=0)
    assert batches.batches_per_epoch == 15
    rows = torch.cat([batches.batch(k)["rows"] for k in range(15)])
    assert len(set(rows.tolist())) == 240
    assert not torch.equal(batches.batch(15)["rows"], batches.batch(0)["rows"])  # a new order each epoch
    batch, again = batches.batch(17), NLIBatches(pairs, data.labels, 16, seed=0).batch(17)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    first = int(batch["rows"][0])
    length = int(batch["attention_mask"][0].sum())
    expected = tokenizer(data.premises[first], data.hypotheses[first], truncation=True, max_length=64)
    assert batch["input_ids"][0, :length].tolist() == expected["input_ids"]
    assert batch["token_type_ids"][0, :length].tolist() == expected["token_type_ids"]
    assert (batch["input_ids"][0, length:] == tokenizer.pad_token_id).all()
    assert int(batch["labels"][0]) == data.labels[first]


def _fails_with(capsys, message: str, *args) -> None:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


def test_unknown_label_in_the_training_data_names_file_and_line(capsys, tmp_path, tiny_bert_dir):
    bad = tmp_path / "train.tsv"
    lines = TRAIN.read_text(encoding="utf-8").splitlines()[:5]
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tmaybe"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _fails_with(capsys, f"{bad}:3: unknown label 'maybe'", "finetune", "--model", tiny_bert_dir, "--train", bad,
                "--dev", DEV, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_classifier_with_other_labels_is_an_error(capsys, tmp_path, sample_files):
    from polyglot_distil.models.smoke import build_smoke_model

    two_way = build_smoke_model(tmp_path / "two", "bert", texts=sample_files, vocab_size=300, num_layers=1,
                                head="sequence-classification", num_labels=2)
    _fails_with(capsys, "2-way classification head", "finetune", "--model", two_way, "--train", TRAIN, "--dev", DEV,
                "--out", tmp_path / "out")


def test_batch_larger_than_the_data_is_an_error(capsys, tmp_path, tiny_bert_dir):
    _fails_with(capsys, "--batch-size 500 is more than the 240 training pairs", "finetune", "--model", tiny_bert_dir,
                "--train", TRAIN, "--dev", DEV, "--out", tmp_path / "out", "--batch-size", 500)


@pytest.mark.slow
def test_existing_output_needs_resume_or_overwrite(capsys, run_dir, tiny_bert_dir):
    _fails_with(capsys, "pass --resume to continue", "finetune", "--model", tiny_bert_dir, "--train", TRAIN,
                "--dev", DEV, "--out", run_dir)


@pytest.mark.slow
def test_training_on_the_rows_the_data_uses_saves_what_full_training_saves(tmp_path, run_dir, tiny_bert_dir, capsys):
    """--reduce-vocab with weight decay 0 (the default): best/ and final/ equal full training's,
    bitwise, and so do the losses; fewer rows were trained."""
    capsys.readouterr()
    assert finetune(tiny_bert_dir, tmp_path / "reduced", "--reduce-vocab") == 0
    note = capsys.readouterr().err  # a note, on stderr with the progress
    used, rows = (int(n.replace(",", "")) for n in note.split("training ")[1].split(" ")[:4:3])
    assert 0 < used < rows
    for folder in ("best", "final"):
        expected, reduced = saved_weights(run_dir / folder), saved_weights(tmp_path / "reduced" / folder)
        assert expected.keys() == reduced.keys()
        assert all(torch.equal(expected[k], reduced[k]) for k in expected), folder
    assert metrics_rows(tmp_path / "reduced", "train") == metrics_rows(run_dir, "train")
    resumed = tmp_path / "resumed"  # its checkpoints hold the used rows only, and resume from them
    shutil.copytree(tmp_path / "reduced", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-30")
    shutil.rmtree(resumed / "final")
    assert finetune(tiny_bert_dir, resumed, "--reduce-vocab", "--resume") == 0
    expected, reduced = saved_weights(run_dir / "final"), saved_weights(resumed / "final")
    assert all(torch.equal(expected[k], reduced[k]) for k in expected)


@pytest.mark.slow
def test_with_weight_decay_the_rows_the_data_never_uses_keep_their_values(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    out = tmp_path / "decayed"
    assert finetune(tiny_bert_dir, out, "--reduce-vocab", "--weight-decay", 0.1, "--epochs", 0.5) == 0
    name = "bert.embeddings.word_embeddings.weight"
    source, trained = saved_weights(tiny_bert_dir)[name], saved_weights(out / "final")[name]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    data = read_nli(TRAIN)
    encoded = tokenizer(list(data.premises), list(data.hypotheses), truncation="longest_first", max_length=64)
    used = sorted({i for ids in encoded["input_ids"] for i in ids} | {tokenizer.pad_token_id})
    unused = np.setdiff1d(np.arange(source.shape[0]), used)
    assert len(unused) > 0 and torch.equal(trained[unused], source[unused])
    assert not torch.equal(trained[used], source[used])
