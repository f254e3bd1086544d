"""Student recipes from the literature: MiniLMv2 relation distillation, the LightMBERT-style
student (bottom layers, frozen embeddings), width reduction by importance, several sizes at once."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import CORPORA, metrics_rows, run_cli, saved_weights
from polyglot_distil.distill import losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [f"{lang}={CORPORA / lang / 'sample.txt'}" for lang in ("en", "fr")]
LANGS = [arg for spec in TEXTS for arg in ("--lang", spec)]
SHORT = ["--block-size", 32, "--heldout-blocks", 8, "--batch-size", 8, "--lr", 1e-3, "--log-every", 1,
         "--no-progress"]


def _fails_with(capsys, message: str, *args) -> None:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


@pytest.fixture(scope="module")
def teacher_dir(redrawn_bert_dir):
    return redrawn_bert_dir


# ---------------------------------------------------------------------------------------------
# MiniLMv2: self-attention relations


def test_a_relation_matrix_is_the_softmax_of_scaled_dot_products_on_two_tokens():
    # Two tokens, 4 features, 2 relation heads of d_r = 2: head 0 reads features 0-1, head 1 features 2-3.
    x = torch.tensor([[[1.0, 0.0, 2.0, 0.0],
                       [1.0, 1.0, 0.0, 1.0]]])
    relations = losses.self_attention_relations(x, 2, torch.ones(1, 2)).exp()
    # head 0: x0 = (1, 0), x1 = (1, 1): dot products [[1, 1], [1, 2]] / sqrt(2)
    # head 1: x0 = (2, 0), x1 = (0, 1): dot products [[4, 0], [0, 1]] / sqrt(2)
    def row(a, b):
        ea, eb = math.exp(a / math.sqrt(2)), math.exp(b / math.sqrt(2))
        return [ea / (ea + eb), eb / (ea + eb)]

    expected = torch.tensor([[row(1, 1), row(1, 2)], [row(4, 0), row(0, 1)]])
    assert relations.shape == (1, 2, 2, 2)
    assert torch.allclose(relations[0], expected, atol=1e-6)


def test_a_padding_token_gets_no_relation_and_changes_no_loss():
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    student = [torch.randn(2, 3, 8, generator=generator) for _ in range(3)]
    teacher = [torch.randn(2, 3, 12, generator=generator) for _ in range(3)]
    assert losses.self_attention_relations(student[0], 2, mask).exp()[1, :, :, 2].max() == 0
    changed = [s.clone() for s in student]
    for s in changed:
        s[1, 2] += 50.0  # the padding token of the second sequence
    value = losses.attention_relation_kl(student, teacher, mask, 4)
    assert torch.isfinite(value) and value > 0
    assert torch.allclose(losses.attention_relation_kl(changed, teacher, mask, 4), value)


def test_the_relation_loss_is_the_textbook_kl_summed_over_q_k_v():
    """Per relation: KL(teacher || student) summed over keys, mean over relation heads and tokens."""
    generator = torch.Generator().manual_seed(1)
    student = [torch.randn(1, 3, 4, generator=generator) for _ in range(3)]
    teacher = [torch.randn(1, 3, 6, generator=generator) for _ in range(3)]
    expected = 0.0
    for s, t in zip(student, teacher):
        for head in range(2):
            s_h, t_h = s[0, :, head * 2:(head + 1) * 2], t[0, :, head * 3:(head + 1) * 3]
            p_s = torch.softmax(s_h @ s_h.T / math.sqrt(2), -1)
            p_t = torch.softmax(t_h @ t_h.T / math.sqrt(3), -1)
            expected += (p_t * (p_t.log() - p_s.log())).sum() / (2 * 3)
    assert torch.allclose(losses.attention_relation_kl(student, teacher, torch.ones(1, 3), 2),
                          torch.tensor(float(expected)), atol=1e-6)


def test_the_relation_loss_is_zero_when_student_equals_teacher():
    generator = torch.Generator().manual_seed(2)
    qkv = [torch.randn(2, 5, 8, generator=generator) for _ in range(3)]
    mask = torch.ones(2, 5)
    mask[0, 3:] = 0
    assert losses.attention_relation_kl(qkv, qkv, mask, 4).abs() < 1e-6


def test_queries_keys_and_values_come_from_hooks_with_the_fast_attention_kept(teacher_dir):
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.models.encoder import encoder_outputs

    model = AutoModelForMaskedLM.from_pretrained(teacher_dir, attn_implementation="sdpa").eval()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        out = encoder_outputs(model, ids, torch.ones_like(ids), hidden_states=True, relation_layer=2)
        attention = model.base_model.encoder.layer[2].attention.self
        before = out["hidden"][2]  # the input of layer 2
        for captured, projection in zip(out["qkv"], (attention.query, attention.key, attention.value)):
            assert torch.allclose(captured, projection(before), atol=1e-6)
    assert model.config._attn_implementation == "sdpa"
    assert not any(projection._forward_hooks for projection in (attention.query, attention.key, attention.value))


@pytest.mark.slow
def test_minilm_trains_a_narrower_student_from_a_chosen_teacher_layer(tmp_path, teacher_dir):
    out = tmp_path / "run"
    assert run_cli("distil", "general", "--teacher", teacher_dir, "--hidden-size", 16, *LANGS, "--out", out,
                   "--recipe", "minilm", "--relation-layer", 2, "--steps", 16, "--eval-every", 16, *SHORT,
                   "--lr", 1e-2) == 0
    rows = metrics_rows(out, "train")
    assert all(set(r) >= {"loss", "relation"} and not {"hidden", "attention"} & set(r) for r in rows)
    start, final = rows[0]["relation"], metrics_rows(out, "eval")[-1]["eval_relation"]
    assert final < 0.75 * start, (start, final)
    info = json.loads((out / "final" / "distillation.json").read_text())
    assert info["weights"]["relation_layer"] == 2 and info["weights"]["relation_heads"] == 2
    assert json.loads((out / "final" / "config.json").read_text())["hidden_size"] == 16


@pytest.mark.parametrize("options, message", [
    (["--relation-heads", 3], "--relation-heads 3 does not divide both hidden sizes (teacher 32, student 16)"),
    (["--relation-layer", 4], "--relation-layer 4: teacher layer 4 does not exist"),
    (["--relation-heads", 0], "--relation-heads must be at least 1"),
])
def test_an_impossible_relation_setting_is_one_line(options, message, tmp_path, teacher_dir, capsys):
    _fails_with(capsys, message, "distil", "general", "--teacher", teacher_dir, "--hidden-size", 16, *LANGS,
                "--out", tmp_path / "run", "--recipe", "minilm", "--steps", 1, *SHORT, *options)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# LightMBERT: the teacher's bottom layers, its embeddings frozen


def test_init_layers_bottom_copies_the_teachers_bottom_layers(tmp_path, teacher_dir):
    from transformers import AutoModelForMaskedLM

    assert run_cli("student", "--teacher", teacher_dir, "--layers", 3, "--init-layers", "bottom",
                   "--out", tmp_path / "s") == 0
    student, teacher = (AutoModelForMaskedLM.from_pretrained(p) for p in (tmp_path / "s", teacher_dir))
    for j in range(3):
        s_layer, t_layer = (m.base_model.encoder.layer[j].state_dict() for m in (student, teacher))
        assert all(torch.equal(s_layer[name], t_layer[name]) for name in t_layer), j
    assert json.loads((tmp_path / "s" / "student.json").read_text())["init_layers"] == [0, 1, 2]


@pytest.mark.slow
def test_frozen_embeddings_are_bitwise_unchanged_by_phase_1(tmp_path, teacher_dir):
    student = tmp_path / "student"
    assert run_cli("student", "--teacher", teacher_dir, "--init-layers", "bottom", "--out", student) == 0
    out = tmp_path / "run"
    assert run_cli("distil", "general", "--teacher", teacher_dir, "--student", student, *LANGS, "--out", out,
                   "--freeze-embeddings", "--steps", 3, "--eval-every", 3, *SHORT) == 0
    before, after = saved_weights(student), saved_weights(out / "final")
    embeddings = [name for name in before if ".embeddings." in name]
    assert len(embeddings) >= 4  # word, position, type, LayerNorm
    assert all(torch.equal(before[name], after[name]) for name in embeddings)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[query], after[query])  # the rest did train


# ---------------------------------------------------------------------------------------------
# Width reduction by importance (ETD-Impt)

IMPORTANCE = ["--importance-text", TEXTS[0], "--importance-text", TEXTS[1], "--importance-lines", 40]


def _importance_batches(model_dir):
    from polyglot_distil.data.corpus import group_lang_specs
    from polyglot_distil.models.importance import importance_batches
    from polyglot_distil.models.loading import load_tokenizer

    return importance_batches(load_tokenizer(model_dir), group_lang_specs(TEXTS), 40, 1000)[:2]


def test_a_heads_score_is_the_derivative_of_the_loss_by_a_gate_on_its_output(teacher_dir):
    """|d loss / d g| for g scaling head 1's columns of layer 1's attention output (and its top FFN
    neuron's column of its output), by central differences: the score |sum of w * dL/dw| over them."""
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.models.importance import importance_loss, importance_scores

    model = AutoModelForMaskedLM.from_pretrained(teacher_dir).double().eval()
    batch = _importance_batches(teacher_dir)[0]
    scores = importance_scores(model, [batch])
    assert scores["loss"] == "mlm" and scores["heads"].shape == (4, 2) and scores["neurons"].shape == (4, 64)
    layer = model.base_model.encoder.layer[1]

    def gated(weight, columns, gate):
        saved = weight[:, columns].clone()
        with torch.no_grad():
            weight[:, columns] *= gate
            value = importance_loss(model, batch).item()
            weight[:, columns] = saved
        return value

    top = int(scores["neurons"][1].argmax())  # a score well above the differences' rounding
    for weight, columns, expected in ((layer.attention.output.dense.weight, slice(16, 32), scores["heads"][1, 1]),
                                      (layer.output.dense.weight, slice(top, top + 1), scores["neurons"][1, top])):
        derivative = (gated(weight, columns, 1 + 1e-6) - gated(weight, columns, 1 - 1e-6)) / 2e-6
        assert expected > 0 and abs(derivative) == pytest.approx(float(expected), rel=1e-4)


def test_a_model_without_an_mlm_head_is_scored_by_hidden_state_reconstruction(teacher_dir):
    from transformers import AutoModel

    from polyglot_distil.models.importance import importance_scores

    bare = AutoModel.from_pretrained(teacher_dir)  # the encoder alone: no MLM head
    scores = importance_scores(bare, _importance_batches(teacher_dir))
    assert scores["loss"] == "reconstruction"
    assert all(torch.isfinite(s).all() and (s > 0).any() for s in (scores["heads"], scores["neurons"], scores["hidden"]))


def test_the_student_keeps_the_highest_scoring_heads_and_neurons(teacher_dir):
    from transformers import AutoModelForMaskedLM

    from polyglot_distil.models.student import StudentSpec, build_student

    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir)
    scores = {"loss": "mlm", "heads": torch.tensor([[1.0, 3.0]] * 4), "hidden": torch.arange(32.0),
              "neurons": torch.arange(64.0).flip(0).repeat(4, 1)}  # layer l: neuron n scores 63 - n
    spec = StudentSpec(layers=2, init_layers=[3, 1], init="importance", heads=1, intermediate_size=10)
    student, description = build_student(teacher, spec, importance=scores)
    kept = description["kept"]
    assert [layer["heads"] for layer in kept["layers"]] == [[1], [1]]
    assert kept["layers"][0]["neurons"] == list(range(10)) and kept["hidden"] == list(range(16, 32))
    s, t = student.base_model.encoder.layer[0], teacher.base_model.encoder.layer[3]
    hidden, rows = torch.arange(16, 32), torch.arange(16, 32)  # head 1 of 2 x 16 is rows 16-31
    assert torch.equal(s.attention.self.query.weight, t.attention.self.query.weight[rows][:, hidden])
    assert torch.equal(s.attention.output.dense.weight, t.attention.output.dense.weight[hidden][:, rows])
    assert torch.equal(s.intermediate.dense.weight, t.intermediate.dense.weight[:10][:, hidden])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[hidden][:, :10])
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight[:, hidden])


@pytest.mark.slow
def test_keeping_every_head_and_neuron_gives_the_teacher(tmp_path, teacher_dir):
    from transformers import AutoModelForMaskedLM

    assert run_cli("student", "--teacher", teacher_dir, "--init", "importance", "--layers", 4, *IMPORTANCE,
                   "--out", tmp_path / "s") == 0
    student, teacher = (saved_weights(p) for p in (tmp_path / "s", teacher_dir))
    assert student.keys() == teacher.keys() and all(torch.equal(student[k], teacher[k]) for k in teacher)
    kept = json.loads((tmp_path / "s" / "student.json").read_text())["kept"]
    assert all(layer["heads"] == [0, 1] and layer["neurons"] == list(range(64)) for layer in kept["layers"])
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    outputs = [AutoModelForMaskedLM.from_pretrained(p)(input_ids=ids).logits for p in (tmp_path / "s", teacher_dir)]
    assert torch.equal(*outputs)


@pytest.mark.slow
def test_a_narrower_importance_student_reports_its_kept_heads_and_distils(tmp_path, teacher_dir, capsys):
    student = tmp_path / "s"
    assert run_cli("student", "--teacher", teacher_dir, "--init", "importance", "--heads", 1,
                   "--intermediate-size", 24, *IMPORTANCE, "--out", student) == 0
    printed = capsys.readouterr().out
    assert "heads kept" in printed and "neurons kept" in printed
    info = json.loads((student / "student.json").read_text())
    config = json.loads((student / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (16, 1, 24)
    assert info["init"] == "importance" and info["kept"]["loss"] == "mlm" and len(info["kept"]["hidden"]) == 16
    assert [len(layer["heads"]) for layer in info["kept"]["layers"]] == [1, 1]
    assert [len(layer["neurons"]) for layer in info["kept"]["layers"]] == [24, 24]
    assert run_cli("distil", "general", "--teacher", teacher_dir, "--student", student, *LANGS, "--recipe", "minilm",
                   "--relation-heads", 1, "--out", tmp_path / "run", "--steps", 2, "--eval-every", 2, *SHORT) == 0


@pytest.mark.parametrize("options, message", [
    (["--heads", 3, *IMPORTANCE], "--heads 3: the teacher's layers have 2 attention heads; keep between 1 and 2"),
    (["--intermediate-size", 65, *IMPORTANCE], "the teacher's feed-forward layers have 64 neurons"),
    (["--hidden-size", 24, *IMPORTANCE], "a kept head keeps the teacher's head size (16)"),
    ([], "--init importance needs --importance-text"),
])
def test_an_impossible_importance_student_is_one_line(options, message, tmp_path, teacher_dir, capsys):
    _fails_with(capsys, message, "student", "--teacher", teacher_dir, "--init", "importance", *options,
                "--out", tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_importance_text_without_importance_init_is_one_line(tmp_path, teacher_dir, capsys):
    _fails_with(capsys, "--importance-text is read only with --init importance", "student", "--teacher",
                teacher_dir, *IMPORTANCE, "--out", tmp_path / "s")


# ---------------------------------------------------------------------------------------------
# Several sizes from one command


def test_sizes_are_every_layers_and_hidden_pair_and_bad_lists_are_one_line():
    from polyglot_distil.errors import UserError
    from polyglot_distil.sizes import parse_sizes

    assert parse_sizes("2,4", None) == [(2, None), (4, None)]
    assert parse_sizes("2,4,2", "64,32") == [(2, 64), (2, 32), (4, 64), (4, 32)]
    for layers, message in (("2,x", "--layer-counts '2,x': expected comma-separated numbers"),
                            ("0,2", "give one or more sizes of at least 1"), (None, "--layer-counts is required")):
        with pytest.raises(UserError, match=message):
            parse_sizes(layers, None)


def test_each_size_searches_its_own_mapping_when_the_config_searches(tmp_path):
    from polyglot_distil.sizes import size_config

    base = {"run_dir": "run", "student": {"layers": 6, "heads": 4}}
    plain = size_config(base, 2, None, tmp_path / "L2")
    assert plain["stages"] == ["student", "general", "task", "eval"] and plain["student"] == {"layers": 2, "heads": 4}
    searched = size_config({**base, "stages": ["count", "trim", "search", "student", "general", "task", "eval"]}, 4,
                           128, tmp_path / "L4-H128")
    assert searched["stages"] == ["search", "student", "general", "task", "eval"]
    assert searched["student"] == {"layers": 4, "heads": 4, "hidden_size": 128}  # the search's students, too
    assert searched["run_dir"] == str(tmp_path / "L4-H128") and base["student"]["layers"] == 6
    assert plain["eval"]["teacher_cache"] == searched["eval"]["teacher_cache"] == str(tmp_path / "teacher-predictions")
    assert plain["general"]["token_cache"] == searched["search"]["token_cache"] == str(tmp_path / "token-cache")
    assert "search" not in plain


@pytest.fixture(scope="module")
def sizes_run(tmp_path_factory, tiny_bert_dir):
    """`sizes --layer-counts 1,2` on a config whose shared stages were done before: the trimmed model is
    the tiny BERT, the task teacher a tiny classifier with its vocabulary (both as `run` leaves them)."""
    import yaml
    from transformers import AutoModelForSequenceClassification

    tmp = tmp_path_factory.mktemp("sizes")
    run_dir = tmp / "run"
    shutil.copytree(tiny_bert_dir, run_dir / "trim" / "model")
    classifier = run_dir / "finetune" / "run" / "best"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).save_pretrained(classifier)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(tiny_bert_dir / name, classifier / name)
    nli = CORPORA / "nli"
    config = {
        "run_dir": str(run_dir), "model": str(tiny_bert_dir), "languages": {"source": "en", "target": "fr"},
        "corpora": {lang: [str(CORPORA / lang / "sample.txt")] for lang in ("en", "fr")},
        "task_data": {"train": str(nli / "train-en.tsv"), "dev": str(nli / "dev-en.tsv")}, "eval_data": str(nli),
        "stages": ["student", "general", "task", "eval"],
        "general": {"steps": 2, "batch_size": 8, "block_size": 32, "heldout_blocks": 0, "no_progress": True},
        "task": {"full_epochs": 0.1, "sparse_epochs": 0.1, "batch_size": 16, "no_progress": True},
        "eval": {"split": "test", "limit": 8, "repeats": 1, "no_progress": True},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert run_cli("sizes", path, "--layer-counts", "1,2") == 0
    return run_dir


@pytest.mark.slow
def test_sizes_builds_distils_and_evaluates_one_student_per_size(sizes_run):
    for layers in (1, 2):
        folder = sizes_run / "sizes" / f"L{layers}"
        assert json.loads((folder / "task" / "run" / "best" / "config.json").read_text())["num_hidden_layers"] == layers
        report = json.loads((folder / "eval" / "report" / "report.json").read_text())
        assert report["models"]["teacher"]["path"].endswith("finetune/run/best")
        assert all((folder / stage / "DONE.json").is_file() for stage in ("student", "general", "task", "eval"))
        assert report["settings"]["teacher_cache"] == str(sizes_run / "sizes" / "teacher-predictions")
    # one text, tokenized once for both sizes; one task teacher, predicted once: an entry per split and language
    assert len(list((sizes_run / "sizes" / "token-cache").glob("tokens-*"))) == 1
    assert not (sizes_run / "sizes" / "L1" / "general" / "run" / "cache").exists()
    assert sorted(p.name.split("-")[1] for p in (sizes_run / "sizes" / "teacher-predictions").glob("*.npy")) == [
        "en", "fr"]


@pytest.mark.slow
def test_sizes_writes_a_size_latency_accuracy_table_and_plot_with_the_teacher(sizes_run):
    rows = json.loads((sizes_run / "sizes" / "sizes.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["teacher", "L1", "L2"]
    assert [r["layers"] for r in rows] == [4, 1, 2] and rows[1]["params"] < rows[2]["params"] < rows[0]["params"]
    for row in rows:
        report_role = "teacher" if row["model"] == "teacher" else "model"
        report = json.loads((sizes_run / "sizes" / (row["model"] if row["model"] != "teacher" else "L1") / "eval"
                             / "report" / "report.json").read_text())
        assert row["average_accuracy"] == report["average"]["accuracy"][report_role]
        assert row["cpu_latency_ms"] > 0 and row["speedup"] == pytest.approx(rows[0]["cpu_latency_ms"]
                                                                              / row["cpu_latency_ms"])
    table = (sizes_run / "sizes" / "SIZES.md").read_text()
    assert "| teacher | 4 |" in table and "| L2 | 2 |" in table and "CPU latency (ms)" in table
    assert (sizes_run / "sizes" / "sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_sizes_needs_the_per_size_stages(tmp_path, capsys):
    import yaml

    config = {"run_dir": str(tmp_path / "run"), "model": "bert-base-multilingual-cased",
              "languages": {"source": "en", "target": "fr"}, "stages": ["count", "trim"],
              "corpora": {lang: [str(CORPORA / lang / "sample.txt")] for lang in ("en", "fr")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    _fails_with(capsys, "the config's stages lack student, general, task, eval", "sizes", path, "--layer-counts", "1,2")
    assert not (tmp_path / "run").exists()
