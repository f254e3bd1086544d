"""Correct at scale, checked on CPU: two gloo processes (one `accelerate launch` running every
multi-process command of this module) compute what one process computes, for every loss of
phase 2 (some leave parameters without gradient), phase 1 with the attention loss alone, and
`finetune`; padded NLI batches give the same losses on 1 process, 2 processes and with
--grad-accum 2 (one global mean); the dev evaluation shared out over processes gives the logits
of one process, bit for bit; fp16 checkpoints train float32 weights (bf16 through autocast) and
are saved in their own dtype, or in --save-dtype."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CORPORA, ROOT, metrics_rows, redraw_encoder_matrices, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN, DEV = CORPORA / "nli" / "train-en.tsv", CORPORA / "nli" / "dev-en.tsv"
TEXTS = ("--lang", f"en={CORPORA / 'en' / 'sample.txt'}", "--lang", f"fr={CORPORA / 'fr' / 'sample.txt'}")
TERMS = ("hidden", "attention", "logits", "label", "mlm", "cosine")
TASK_LOSSES = {  # phase 2 runs by the losses they enable
    "logits": ("--hidden-weight", 0, "--attention-weight", 0),
    "hidden": ("--logits-weight", 0, "--attention-weight", 0),  # the pooler and classifier get no gradient
    "attention": ("--logits-weight", 0, "--hidden-weight", 0),  # nor the last layer's feed-forward
    "all": ("--label-weight", 1),
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """A 3-way NLI classifier on the tiny BERT (4 layers), its layers redrawn at std 0.2 and its head
    at std 1, so that it differs from the student and predicts more than one label."""
    from polyglot_distil.models.classifier import new_classifier
    from polyglot_distil.models.loading import copy_tokenizer

    model, _ = new_classifier(str(tiny_bert_dir), seed=1)
    redraw_encoder_matrices(model, std=0.2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=torch.Generator().manual_seed(1)))
    out = tmp_path_factory.mktemp("scale") / "teacher"
    model.save_pretrained(out)
    copy_tokenizer(tiny_bert_dir, out)
    return out


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """Two of the tiny BERT's layers, no dropout (so that runs on 1 and 2 processes compare)."""
    out = tmp_path_factory.mktemp("scale") / "student"
    assert run_cli("student", "--teacher", tiny_bert_dir, "--layers", 2, "--out", out) == 0
    return out


def _task(teacher, student, out, *extra) -> list[str]:
    """3 steps (2 full, 1 sparse) of 8 padded pairs; the dev evaluation at step 3."""
    return [str(a) for a in ("distil", "task", "--teacher", teacher, "--student", student, "--train", TRAIN,
                             "--dev", DEV, "--max-train-pairs", 32, "--batch-size", 8, "--full-epochs", 0.5,
                             "--sparse-epochs", 0.25, "--max-length", 48, "--lr", 1e-3, "--log-every", 1,
                             "--no-progress", "--out", out, *extra)]


def _finetune(model, out) -> list[str]:
    return [str(a) for a in ("finetune", "--model", model, "--train", TRAIN, "--dev", DEV, "--max-train-pairs",
                             32, "--batch-size", 8, "--epochs", 0.5, "--max-length", 48, "--lr", 1e-3,
                             "--log-every", 1, "--no-progress", "--out", out)]


def _general(teacher, student, out, *extra) -> list[str]:
    return [str(a) for a in ("distil", "general", "--teacher", teacher, "--student", student, *TEXTS,
                             "--block-size", 32, "--heldout-blocks", 8, "--batch-size", 8, "--steps", 2,
                             "--eval-every", 2, "--save-every", 2, "--log-every", 1, "--lr", 1e-3, "--no-progress",
                             "--out", out, *extra)]


def _commands(root: Path, teacher, student, tiny_bert) -> dict[str, list[str]]:
    """Every command this module runs on 1 and on 2 processes, by name, writing under `root`."""
    commands = {f"task-{name}": _task(teacher, student, root / f"task-{name}", *extra)
                for name, extra in TASK_LOSSES.items()}
    commands["finetune"] = _finetune(student, root / "finetune")
    commands["general-attention"] = _general(tiny_bert, student, root / "general-attention", "--hidden-weight", 0)
    commands["search-map"] = [str(a) for a in (
        "distil", "search-map", "--teacher", tiny_bert, "--layers", 2, *TEXTS, "--candidates", "1,3;0,3;0,1",
        "--steps", 2, "--block-size", 32, "--heldout-blocks", 8, "--batch-size", 8, "--lr", 1e-3, "--no-progress",
        "--out", root / "search-map")]
    commands["dev-logits"] = ["dev-logits", str(teacher), str(DEV), str(root / "dev-logits.npy")]
    return commands


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, teacher_dir, student_dir, tiny_bert_dir) -> Path:
    """Every command of `_commands` under one `accelerate launch` of 2 gloo processes."""
    root = tmp_path_factory.mktemp("two-processes")
    script = root / "commands.json"
    script.write_text(json.dumps(list(_commands(root, teacher_dir, student_dir, tiny_bert_dir).values())))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), str(ROOT / "tests" / "launch_commands.py"), str(script)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # this checkout
    done = subprocess.run(launch, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "task-all" / "checkpoints" / "step-3" / "random_states_1.pkl").exists()  # really two processes
    return root


def _one_process(tmp_path, name, teacher_dir, student_dir, tiny_bert_dir) -> Path:
    command = _commands(tmp_path, teacher_dir, student_dir, tiny_bert_dir)[name]
    assert run_cli(*command) == 0
    return tmp_path / name


def _same_rows(one: Path, other: Path) -> None:
    """The same metrics rows, step by step: losses (and held-out losses) within float tolerance,
    everything else (dev accuracy and agreement included) equal."""
    for kind in ("train", "eval"):
        a, b = metrics_rows(one, kind), metrics_rows(other, kind)
        assert [(r["step"], sorted(r)) for r in a] == [(r["step"], sorted(r)) for r in b], kind
        for x, y in zip(a, b):
            for key, value in x.items():
                if key in ("loss", "grad_norm") or key.startswith("eval_") or key in TERMS:
                    assert y[key] == pytest.approx(value, rel=1e-4, abs=1e-9), (kind, x["step"], key)
                else:
                    assert y[key] == value, (kind, x["step"], key)


# ---------------------------------------------------------------------------------------------
# Several processes


@pytest.mark.slow
@pytest.mark.parametrize("losses", list(TASK_LOSSES))
def test_phase_2_on_two_processes_equals_one_process(tmp_path, two_processes, losses, teacher_dir, student_dir,
                                                     tiny_bert_dir):
    """Every step's loss and terms, the dev accuracy and agreement: the same on 2 processes (which
    see the same global batches cut in two) as on 1, whichever parameters the losses leave out."""
    one = _one_process(tmp_path, f"task-{losses}", teacher_dir, student_dir, tiny_bert_dir)
    _same_rows(one, two_processes / f"task-{losses}")
    assert len(metrics_rows(one, "eval")) == 1


@pytest.mark.slow
def test_padded_nli_batches_accumulated_give_the_losses_of_one_process(tmp_path, two_processes, teacher_dir,
                                                                       student_dir):
    """The hidden and attention terms average over the global batch's tokens: --grad-accum 2 (and
    2 processes, above) give the losses of the whole padded batch at once."""
    assert run_cli(*_task(teacher_dir, student_dir, tmp_path / "accumulated", *TASK_LOSSES["all"],
                          "--grad-accum", 2)) == 0
    _same_rows(two_processes / "task-all", tmp_path / "accumulated")


@pytest.mark.slow
def test_finetune_on_two_processes_equals_one_process(tmp_path, two_processes, teacher_dir, student_dir,
                                                      tiny_bert_dir):
    one = _one_process(tmp_path, "finetune", teacher_dir, student_dir, tiny_bert_dir)
    _same_rows(one, two_processes / "finetune")
    assert [r["step"] for r in metrics_rows(one, "eval")] == [2]


@pytest.mark.slow
def test_phase_1_with_the_attention_loss_alone_runs_on_two_processes(tmp_path, two_processes, teacher_dir,
                                                                     student_dir, tiny_bert_dir):
    """The attention loss alone gives the last layer's feed-forward no gradient; found on the
    first batch, DDP is told, and the run equals one process's."""
    one = _one_process(tmp_path, "general-attention", teacher_dir, student_dir, tiny_bert_dir)
    _same_rows(one, two_processes / "general-attention")
    assert set(metrics_rows(one, "train")[0]) >= {"attention"} and "hidden" not in metrics_rows(one, "train")[0]


@pytest.mark.slow
def test_the_layer_mapping_search_on_two_processes_ranks_as_one_process(tmp_path, two_processes, teacher_dir,
                                                                       student_dir, tiny_bert_dir):
    """Every candidate's held-out criterion and phase-1 loss, the best mapping and its file: the
    same when `distil search-map` runs on 2 processes (each candidate's run shared out)."""
    one = _one_process(tmp_path, "search-map", teacher_dir, student_dir, tiny_bert_dir)
    a, b = (json.loads((folder / "search.json").read_text()) for folder in (one, two_processes / "search-map"))
    assert [r["layer_map"] for r in a["tried"]] == [r["layer_map"] for r in b["tried"]] == [[1, 3], [0, 3], [0, 1]]
    for x, y in zip(a["tried"], b["tried"]):
        assert y["criterion"] == pytest.approx(x["criterion"], rel=1e-4) and x["criterion"] > 0
        assert y["eval_loss"] == pytest.approx(x["eval_loss"], rel=1e-4)
    assert len({r["criterion"] for r in a["tried"]}) == 3  # the mappings are told apart
    assert a["best"] == b["best"]
    assert (one / "layer_map.txt").read_text() == (two_processes / "search-map" / "layer_map.txt").read_text()
    assert (two_processes / "search-map" / "candidates" / "1-3" / "run_config.json").is_file()


@pytest.mark.slow
def test_dev_logits_shared_out_over_two_processes_are_those_of_one_process(two_processes, teacher_dir):
    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.models.classifier import load_classifier, predict_logits

    classifier, pairs = load_classifier(teacher_dir), read_nli(DEV)
    alone = predict_logits(classifier.model, classifier.tokenizer, pairs.premises, pairs.hypotheses, batch_size=8,
                           max_length=48, progress=False)
    shared = np.load(two_processes / "dev-logits.npy")
    assert np.array_equal(shared, alone)
    assert len(set(alone.argmax(-1))) > 1  # a model that tells pairs apart


def test_each_part_predicts_its_own_batches_and_leaves_the_rest_nan(teacher_dir):
    from polyglot_distil.data.nli import read_nli
    from polyglot_distil.models.classifier import load_classifier, predict_logits

    classifier, pairs = load_classifier(teacher_dir), read_nli(DEV)
    parts = [predict_logits(classifier.model, classifier.tokenizer, pairs.premises, pairs.hypotheses, batch_size=8,
                            max_length=48, progress=False, part=(i, 3)) for i in range(3)]
    computed = [~np.isnan(p[:, 0]) for p in parts]
    assert sum(c.sum() for c in computed) == len(pairs) and not (computed[0] & computed[1]).any()
    assert [c.sum() for c in computed] == [24, 20, 16]  # 60 pairs: batches 0, 3, 6 | 1, 4, 7 | 2, 5 (of 8, 8, 4)


# ---------------------------------------------------------------------------------------------
# One global mean, unused parameters


def _padded_batch(generator) -> dict:
    """4 rows of 6 positions, lengths 6, 2, 5, 5 (8 and 10 tokens per half); masked-LM labels at 3 + 2
    positions."""
    lengths = torch.tensor([6, 2, 5, 5])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).long()
    labels = torch.full((4, 6), -100)
    for row, col in ((0, 1), (0, 3), (0, 4), (2, 0), (3, 2)):
        labels[row, col] = 7
    return {"attention_mask": mask, "labels": labels, "input_ids": torch.randint(0, 9, (4, 6), generator=generator)}


def _outputs(generator) -> tuple[dict, dict]:
    """Made-up outputs of a 2-layer student and a 3-layer teacher."""
    def side(layers: int):
        return {"hidden": [torch.randn(4, 6, 8, generator=generator) for _ in range(layers + 1)],
                "attentions": [torch.rand(4, 2, 6, 6, generator=generator) for _ in range(layers)],
                "last": torch.randn(4, 6, 8, generator=generator), "logits": torch.randn(4, 6, 11, generator=generator)}
    return side(2), side(3)


def _slice(outputs: dict, rows: slice, logit_rows) -> dict:
    return {"hidden": [h[rows] for h in outputs["hidden"]], "attentions": [a[rows] for a in outputs["attentions"]],
            "last": outputs["last"][rows], "logits": outputs["logits"][rows][logit_rows[rows]]}


@pytest.mark.parametrize("logit_positions", ["all", "masked"])
def test_micro_batches_of_a_padded_batch_average_to_its_global_mean(logit_positions):
    """Every token-averaged term (hidden, attention, logits, MLM, cosine) of a padded batch with
    unevenly masked rows: the mean over its micro-batches, each given the global counts, is the
    term of the whole batch (the mean of each micro-batch's own mean would not be)."""
    from polyglot_distil.distill.general import LossWeights
    from polyglot_distil.distill.objective import batch_counts, distillation_terms

    generator = torch.Generator().manual_seed(0)
    batch = _padded_batch(generator)
    s, t = _outputs(generator)
    weights = LossWeights(hidden=1, attention=1, logits=1, mlm=1, cosine=1, logit_positions=logit_positions)
    logit_rows = batch["attention_mask"].bool() if logit_positions == "all" else batch["labels"] != -100
    layer_map = [1, 2]

    def terms(rows: slice, counts=None) -> dict:
        return distillation_terms(_slice(s, rows, logit_rows), _slice(t, rows, logit_rows),
                                  batch["attention_mask"][rows], weights, layer_map,
                                  mlm_labels=batch["labels"][rows][logit_rows[rows]], counts=counts)

    whole = terms(slice(0, 4))
    shares = {name: count / 2 for name, count in batch_counts(batch).items()}
    halves = [terms(slice(0, 2), shares), terms(slice(2, 4), shares)]
    own = [terms(slice(0, 2)), terms(slice(2, 4))]
    for name in whole:
        assert torch.allclose((halves[0][name] + halves[1][name]) / 2, whole[name], rtol=1e-6), name
        assert not torch.allclose((own[0][name] + own[1][name]) / 2, whole[name], rtol=1e-3), name


def test_unused_parameters_are_the_ones_the_enabled_losses_do_not_reach(tiny_bert_dir):
    """The pooler and classifier with the hidden loss alone, nothing with the logits; without a
    backward pass, and the random state as it was."""
    import contextlib
    from types import SimpleNamespace

    from polyglot_distil.distill.training import unused_parameters
    from polyglot_distil.models.classifier import new_classifier

    model, _ = new_classifier(str(tiny_bert_dir), seed=0)
    model.train()  # dropout draws random numbers
    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    batch = {"input_ids": torch.randint(5, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}

    def hidden_only(model, batch):
        out = model(**batch, output_hidden_states=True)
        return sum(h.pow(2).mean() for h in out.hidden_states), {}

    def logits(model, batch):
        return model(**batch).logits.pow(2).mean(), {}

    state = torch.get_rng_state()
    assert unused_parameters(model, hidden_only, batch, accelerator) == [
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
    assert unused_parameters(model, logits, batch, accelerator) == []
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Float32 master weights


def assert_same_weights(folder: Path, other: Path) -> None:
    from safetensors.torch import load_file

    a, b = load_file(folder / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _saved_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys() if str(f.get_slice(k).get_dtype()) != "I64"}


def _half(source: Path, out: Path) -> Path:
    from transformers import AutoConfig

    from polyglot_distil.models.loading import copy_tokenizer, model_class_for

    model_class_for(AutoConfig.from_pretrained(source)).from_pretrained(source).half().save_pretrained(out)
    copy_tokenizer(source, out)
    assert _saved_dtypes(out) == {"F16"}
    return out


@pytest.mark.slow
def test_fp16_checkpoints_train_float32_weights_and_save_in_their_dtype(tmp_path, tiny_bert_dir, teacher_dir,
                                                                        student_dir):
    """An fp16 teacher and student: the weights trained (and checkpointed) are float32, the
    forward runs in bf16 autocast, the losses are finite; the models are saved in fp16, the
    dtype the run started from, or in --save-dtype."""
    mlm_teacher, student = _half(tiny_bert_dir, tmp_path / "teacher16"), _half(student_dir, tmp_path / "student16")
    general = tmp_path / "general"
    assert run_cli(*_general(mlm_teacher, student, general, "--steps", 3, "--eval-every", 3, "--save-every", 3,
                             "--mixed-precision", "bf16")) == 0
    assert _saved_dtypes(general / "checkpoints" / "step-3") == {"F32"}  # what trains
    assert _saved_dtypes(general / "final") == {"F16"}  # what the run started from
    assert json.loads((general / "final" / "config.json").read_text())["dtype"] == "float16"
    assert all(np.isfinite(r["loss"]) for r in metrics_rows(general, "train"))

    task = tmp_path / "task"
    nli_teacher = _half(teacher_dir, tmp_path / "nli-teacher16")
    assert run_cli(*_task(nli_teacher, general / "final", task, "--mixed-precision", "bf16",
                          "--save-dtype", "bfloat16")) == 0
    assert _saved_dtypes(task / "checkpoints" / "step-3") == {"F32"}
    assert _saved_dtypes(task / "best") == {"BF16"}
    assert all(np.isfinite(r["loss"]) for r in metrics_rows(task, "train"))
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(task / "best")
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.num_labels == 3
    # the sparse diff, in the saved dtype, rebuilds best/ from the fp16 phase-1 model bit for bit
    assert run_cli("apply-diff", "--student", general / "final", "--diff", task / "sparse_diff",
                   "--out", tmp_path / "dense") == 0
    assert_same_weights(tmp_path / "dense", task / "best")
