"""Every training stage on every model family the project supports: XLM-R (RoBERTa-style
position ids, offset by the pad id) with the real XLM-R tokenizer when ../shared/data has it, and
mixed precision (bf16 autocast, which PyTorch runs on CPU). (A BERT body with a Unigram
tokenizer, as multilingual-e5 has: tests/test_real_model.py.)"""

from __future__ import annotations

import json

import pytest

from conftest import CORPORA, SHARED_DATA, metrics_rows, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NLI = CORPORA / "nli"


@pytest.fixture(scope="module")
def xlmr_source(request):
    """The tiny XLM-R on the real 250,002-piece tokenizer when ../shared/data has it (else on a
    Unigram trained on the samples)."""
    if (SHARED_DATA / "xlmr" / "tokenizer.json").is_file():
        return request.getfixturevalue("xlmr_tokenizer_dir")
    return request.getfixturevalue("tiny_xlmr_dir")


@pytest.mark.slow
def test_xlmr_runs_through_student_phase_1_finetune_and_phase_2(tmp_path, xlmr_source, capsys):
    config = json.loads((xlmr_source / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta" and config["pad_token_id"] == 1
    assert run_cli("student", "--teacher", xlmr_source, "--layers", 1, "--out", tmp_path / "student") == 0
    texts = [f"{lang}={CORPORA / lang / 'sample.txt'}" for lang in ("en", "sw")]
    # blocks as long as the positions allow: RoBERTa-style ids start after the pad id
    longest = config["max_position_embeddings"] - config["pad_token_id"] - 1
    assert run_cli("distil", "general", "--teacher", xlmr_source, "--student", tmp_path / "student",
                   "--lang", texts[0], "--lang", texts[1], "--steps", 3, "--batch-size", 2, "--block-size", longest,
                   "--heldout-blocks", 2, "--eval-every", 3, "--log-every", 1, "--no-progress",
                   "--out", tmp_path / "general") == 0
    assert run_cli("distil", "general", "--teacher", xlmr_source, "--student", tmp_path / "student",
                   "--lang", texts[0], "--block-size", longest + 1, "--steps", 1, "--no-progress",
                   "--out", tmp_path / "too-long") == 2
    assert f"--block-size {longest + 1}: the models take blocks of 3 to {longest} tokens" in capsys.readouterr().err
    assert run_cli("finetune", "--model", xlmr_source, "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--epochs", 0.1, "--batch-size", 8, "--no-progress", "--out", tmp_path / "teacher") == 0
    assert run_cli("distil", "task", "--teacher", tmp_path / "teacher" / "best", "--student",
                   tmp_path / "general" / "final", "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--full-epochs", 0.1, "--sparse-epochs", 0.1, "--batch-size", 8, "--log-every", 1,
                   "--no-progress", "--out", tmp_path / "task") == 0
    rows = metrics_rows(tmp_path / "task", "train")
    assert {r["stage"] for r in rows} == {"full", "sparse"}
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN


@pytest.mark.slow
def test_phase_1_and_phase_2_train_in_bf16_on_cpu(tmp_path, tiny_bert_dir):
    """--mixed-precision bf16 (autocast; the weights stay float32): the losses are finite and fall."""
    from safetensors import safe_open

    texts = [f"{lang}={CORPORA / lang / 'sample.txt'}" for lang in ("en", "fr")]
    assert run_cli("distil", "general", "--teacher", tiny_bert_dir, "--layers", 2, "--lang", texts[0],
                   "--lang", texts[1], "--steps", 30, "--batch-size", 4, "--block-size", 32, "--lr", 2e-3,
                   "--heldout-blocks", 0, "--log-every", 1, "--mixed-precision", "bf16", "--no-progress",
                   "--out", tmp_path / "general") == 0
    losses = [r["loss"] for r in metrics_rows(tmp_path / "general", "train")]
    assert all(loss == loss for loss in losses) and sum(losses[-5:]) < sum(losses[:5])
    with safe_open(str(tmp_path / "general" / "final" / "model.safetensors"), "pt") as f:
        assert all(str(f.get_slice(k).get_dtype()) == "F32" for k in f.keys())
    assert run_cli("finetune", "--model", tiny_bert_dir, "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--epochs", 0.2, "--batch-size", 8, "--no-progress", "--out", tmp_path / "teacher") == 0
    assert run_cli("distil", "task", "--teacher", tmp_path / "teacher" / "best", "--student",
                   tmp_path / "general" / "final", "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--full-epochs", 1, "--sparse-epochs", 1, "--batch-size", 8, "--lr", 1e-3, "--log-every", 1,
                   "--mixed-precision", "bf16", "--no-progress", "--out", tmp_path / "task") == 0
    losses = [r["loss"] for r in metrics_rows(tmp_path / "task", "train") if r["stage"] == "full"]
    assert all(loss == loss for loss in losses) and sum(losses[-3:]) < sum(losses[:3])


# ---------------------------------------------------------------------------------------------
# The family registry (models/families.py) on tiny random models of every family


def _tiny(family: str, attn: str = "eager"):
    import torch
    import transformers

    from test_family_matrix import family_configs

    config, class_name = family_configs(90, dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0,
                                                    sep_token_id=2))[family]
    torch.manual_seed(0)
    model = getattr(transformers, class_name)._from_config(config, attn_implementation=attn).eval()
    ids = torch.randint(3, 90, (2, 9))
    return model, ids, torch.ones_like(ids)


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "xlm-roberta-xl", "distilbert", "electra", "albert",
                                    "deberta-v2", "modernbert", "rembert"])
def test_the_registry_s_head_layers_and_attention_maps_are_the_model_s_own(family):
    """The MLM head the losses call gives the model's own logits; the layers are
    num_hidden_layers; the hooked attention maps of chosen layers are the ones the model returns
    (ALBERT: the shared layer's second call is layer 1)."""
    import torch

    from polyglot_distil.models.encoder import encoder_layers, encoder_outputs
    from polyglot_distil.models.families import FAMILIES, family_of

    model, ids, mask = _tiny(family)
    assert family_of(model) is FAMILIES[family]
    assert len(encoder_layers(model)) == model.config.num_hidden_layers == 2
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        out = encoder_outputs(model, ids, mask, attentions=[1], logit_rows=mask.bool())
    torch.testing.assert_close(out["logits"], reference.logits.reshape(-1, reference.logits.shape[-1]))
    torch.testing.assert_close(out["attentions"][1], reference.attentions[1])


@pytest.mark.parametrize("family", ["albert", "modernbert", "distilbert", "deberta-v2"])
def test_queries_keys_and_values_come_from_the_asked_layer(family):
    """The relation loss's q/k/v: the asked layer's, not another's (ALBERT's shared layer runs
    twice; ModernBERT's fused Wqkv output is split in three)."""
    import torch

    from polyglot_distil.models.encoder import attention_projections, encoder_layers, encoder_outputs

    model, ids, mask = _tiny(family)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        last = encoder_outputs(model, ids, mask, relation_layer=1)["qkv"]
        first = encoder_outputs(model, ids, mask, relation_layer=0)["qkv"]
    assert all(q.shape == (2, 9, 32) for q in last)
    assert not torch.equal(first[0], last[0])
    projections, fused = attention_projections(model, 1)
    assert fused == (family == "modernbert")
    if family in ("distilbert", "deberta-v2"):  # the projection applied to the layer's input, by hand
        torch.testing.assert_close(last[0], projections[0](hidden[1]))
    if family == "modernbert":
        layer = encoder_layers(model)[1]
        with torch.no_grad():
            q, k, v = projections[0](layer.attn_norm(hidden[1])).chunk(3, dim=-1)
        torch.testing.assert_close((q, k, v), last)


def test_a_modernbert_student_keeps_the_attention_kind_of_each_copied_layer():
    from polyglot_distil.models.student import StudentSpec, build_student

    teacher, _, _ = _tiny("modernbert", "sdpa")
    assert teacher.config.layer_types == ["full_attention", "sliding_attention"]
    for init_layers, kinds in (([0], ["full_attention"]), ([1], ["sliding_attention"])):
        student, _ = build_student(teacher, StudentSpec(layers=1, init_layers=init_layers))
        assert student.config.layer_types == kinds and student.config.num_hidden_layers == 1


def test_an_albert_student_runs_the_shared_layer_fewer_times():
    import torch

    from polyglot_distil.models.student import StudentSpec, build_student

    teacher, _, _ = _tiny("albert", "sdpa")
    student, description = build_student(teacher, StudentSpec(layers=1))
    assert student.config.num_hidden_layers == 1 and description["init_layers"] is None
    assert all(torch.equal(p, teacher.state_dict()[n]) for n, p in student.state_dict().items())


def test_an_electra_discriminator_is_distilled_as_a_bare_encoder():
    """ElectraForPreTraining is the discriminator (no MLM head, unlike BERT's ForPreTraining): it
    loads as the bare encoder, and the logit/MLM losses refuse it in one line."""
    import transformers

    from polyglot_distil.errors import UserError
    from polyglot_distil.models.encoder import has_mlm_output, mlm_head
    from polyglot_distil.models.loading import encoder_class_for

    discriminator = transformers.ElectraConfig(architectures=["ElectraForPreTraining"])
    assert encoder_class_for(discriminator) is transformers.AutoModel
    assert encoder_class_for(transformers.BertConfig(architectures=["BertForPreTraining"])) is \
        transformers.AutoModelForMaskedLM
    model = transformers.AutoModel.from_config(transformers.ElectraConfig(
        vocab_size=50, hidden_size=16, embedding_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=20))
    assert not has_mlm_output(model)
    with pytest.raises(UserError, match="has no masked-LM head"):
        mlm_head(model)


def test_a_model_type_not_listed_gets_the_generic_family_s_guesses():
    """ERNIE (BERT-like, not in the registry): the layers found by their count, the one head
    child, the usual projection names."""
    import torch
    import transformers

    from polyglot_distil.models.encoder import attention_projections, encoder_layers, encoder_outputs
    from polyglot_distil.models.families import GENERIC, family_of

    config = transformers.ErnieConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=20)
    torch.manual_seed(0)
    model = transformers.ErnieForMaskedLM(config).eval()
    assert family_of(model) is GENERIC
    assert list(encoder_layers(model)) == list(model.ernie.encoder.layer)
    assert attention_projections(model, 1)[0][0] is model.ernie.encoder.layer[1].attention.self.query
    ids = torch.randint(3, 60, (1, 7))
    with torch.no_grad():
        out = encoder_outputs(model, ids, torch.ones_like(ids), logit_rows=torch.ones_like(ids).bool())
        torch.testing.assert_close(out["logits"], model(input_ids=ids).logits[0])
