"""Student construction: layer mappings, initialisation from the teacher, and `student` errors."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from polyglot_distil.models.encoder import encoder_outputs
from polyglot_distil.models.student import default_init_layers, default_layer_map, hidden_state_pairs


def _load(folder, attn="eager"):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(folder, attn_implementation=attn).eval()


def _layer(model, index: int) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in model.base_model.encoder.layer[index].state_dict().items()}


@pytest.fixture(scope="module")
def bert_student(tmp_path_factory, tiny_bert_dir):
    """A student of the tiny BERT teacher (4 layers) with the default options: 2 layers."""
    out = tmp_path_factory.mktemp("student") / "bert"
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", out) == 0
    return out


def test_default_mappings_are_bistils_for_twelve_to_six_layers():
    assert default_init_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert default_layer_map(12, 6) == [1, 3, 5, 7, 9, 11]  # attention: student j vs teacher 2j+1
    assert hidden_state_pairs(default_layer_map(12, 6)) == [(i, 2 * i) for i in range(7)]  # hidden: i vs 2i


def test_student_has_half_the_layers_and_the_teachers_vocabulary(bert_student, tiny_bert_dir):
    from polyglot_distil.models.loading import load_tokenizer, vocab_in_id_order

    student, teacher = _load(bert_student), _load(tiny_bert_dir)
    assert student.config.num_hidden_layers == teacher.config.num_hidden_layers // 2
    assert vocab_in_id_order(load_tokenizer(bert_student)) == vocab_in_id_order(load_tokenizer(tiny_bert_dir))


@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_student_layer_j_starts_as_the_teacher_layer_it_was_mapped_to(family, tmp_path, tiny_bert_dir, tiny_xlmr_dir):
    teacher_dir = tiny_bert_dir if family == "bert" else tiny_xlmr_dir
    assert run_cli("student", "--teacher", teacher_dir, "--out", tmp_path / "s", "--init-layers", "3,1") == 0
    student, teacher = _load(tmp_path / "s"), _load(teacher_dir)
    for j, t in enumerate([3, 1]):
        for name, tensor in _layer(student, j).items():
            assert torch.equal(tensor, _layer(teacher, t)[name]), (j, name)
    teacher_rest = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if ".layer." not in name:  # embeddings and masked-LM head
            assert torch.equal(tensor, teacher_rest[name]), name


def test_student_first_hidden_state_equals_the_teachers_at_step_zero(bert_student, tiny_bert_dir):
    student, teacher = _load(bert_student), _load(tiny_bert_dir)
    ids = torch.tensor([[2, 40, 41, 42, 43, 3]])
    with torch.no_grad():
        s = encoder_outputs(student, ids, torch.ones_like(ids), hidden_states=True)
        t = encoder_outputs(teacher, ids, torch.ones_like(ids), hidden_states=True)
    assert torch.equal(s["hidden"][0], t["hidden"][0])  # same embeddings
    assert torch.allclose(s["hidden"][1], t["hidden"][1], atol=1e-6)  # student layer 0 = teacher layer 0


def test_random_init_takes_only_the_embeddings_from_the_teacher(tmp_path, tiny_bert_dir):
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", tmp_path / "s", "--init", "random") == 0
    student, teacher = _load(tmp_path / "s"), _load(tiny_bert_dir)
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    for j in range(2):
        query = "attention.self.query.weight"
        assert not any(torch.equal(_layer(student, j)[query], _layer(teacher, t)[query]) for t in range(4))


def test_narrower_student_embeddings_are_the_top_svd_components(tmp_path, tiny_bert_dir):
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", tmp_path / "s", "--hidden-size", "16") == 0
    student, teacher = _load(tmp_path / "s"), _load(tiny_bert_dir)
    assert student.config.hidden_size == 16 and student.config.intermediate_size == 32
    reduced = student.get_input_embeddings().weight.detach()
    full = teacher.get_input_embeddings().weight.detach()
    assert torch.allclose(torch.linalg.svdvals(reduced), torch.linalg.svdvals(full)[:16], rtol=2e-2)
    # The rows are the teacher's embeddings in the top components' coordinates: a projection of them.
    basis = torch.linalg.lstsq(full, reduced).solution  # [32, 16]
    assert torch.allclose(full @ basis, reduced, atol=1e-4)


def test_encoder_outputs_compute_logits_only_at_the_asked_positions(tiny_bert_dir):
    model = _load(tiny_bert_dir)
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 51, 3, 0]])
    mask = (ids != 0).long()
    rows = torch.tensor([[False, True, False, True, False], [False, False, True, False, False]])
    with torch.no_grad():
        out = encoder_outputs(model, ids, mask, logit_rows=rows)
        full = model(input_ids=ids, attention_mask=mask).logits
    assert out["hidden"] is None and out["attentions"] is None
    assert torch.allclose(out["logits"], full[rows], atol=1e-5)


@pytest.mark.parametrize("options, message", [
    (["--init-layers", "0,4"], "teacher layer 4 does not exist"),
    (["--init-layers", "0,1,2"], "names 3 teacher layers but the student has 2"),
    (["--layers", "9"], "between 1 and the teacher's 4 layers"),
    (["--hidden-size", "64"], "wider than the teacher's 32"),
    (["--hidden-size", "20", "--heads", "3"], "not a multiple of the 3 attention heads"),
])
def test_impossible_student_shapes_end_with_one_line_errors(options, message, tmp_path, tiny_bert_dir, capsys):
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", tmp_path / "s", *options) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_existing_student_folder_is_kept_without_overwrite(bert_student, tiny_bert_dir, capsys):
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", bert_student) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_reported_parameter_count_equals_a_hand_count_from_the_config(tmp_path, tiny_bert_dir):
    """`student` reports (and params.count_parameters counts) exactly what a BERT masked-LM of the
    student's config holds, counted by hand: tied decoder once, no pooler."""
    import json

    from transformers import AutoModelForMaskedLM

    from conftest import run_cli
    from polyglot_distil.params import count_parameters

    assert run_cli("student", "--teacher", tiny_bert_dir, "--layers", 2, "--hidden-size", 16, "--heads", 2,
                   "--out", tmp_path / "student") == 0
    c = json.loads((tmp_path / "student" / "config.json").read_text())
    V, H, I, L = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    P, T = c["max_position_embeddings"], c["type_vocab_size"]
    embeddings = (V + P + T) * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    head = (H * H + H) + 2 * H + V  # transform, its LayerNorm, the decoder bias (weight tied to the embeddings)
    counted = count_parameters(AutoModelForMaskedLM.from_pretrained(tmp_path / "student"))
    assert counted["total"] == embeddings + L * layer + head
    assert counted["embedding"] == (V + P + T) * H


def test_zero_layers_is_an_error_not_the_default(tmp_path, tiny_bert_dir, capsys):
    from conftest import run_cli

    assert run_cli("student", "--teacher", tiny_bert_dir, "--layers", 0, "--out", tmp_path / "s") == 2
    assert "--layers 0" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_help_shows_the_defaults():
    from polyglot_distil.cli import build_parser

    parser = build_parser()
    general = parser._subparsers._group_actions[0].choices["distil"]._subparsers._group_actions[0].choices["general"]
    text = general.format_help()
    for shown in ("(default: 200000)", "(default: 0.0001)", "(default: 8)", "(default: 0)"):
        assert shown in " ".join(text.split()), shown


def test_an_impossible_dropout_is_one_line(tmp_path, tiny_bert_dir, capsys):
    from conftest import run_cli

    assert run_cli("student", "--teacher", tiny_bert_dir, "--dropout", 2, "--out", tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dropout 2") and len(err.strip().splitlines()) == 1
