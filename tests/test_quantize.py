"""`quantize`: int8 weights within half a step of the float ones, int8 folders that load back with
one call and compute with exactly the stored integers, quantization-aware distillation whose loss
stays near zero when the teacher is the student itself, and one clear line for what cannot be done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CORPORA, fixed_vocab, run_cli

from polyglot_distil.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, sample_files) -> Path:
    """A tiny NLI classifier (hidden 32, 2 layers) with weights large enough that pairs differ."""
    return spread_classifier(tmp_path_factory.mktemp("qmodel"), sample_files)


def spread_classifier(root: Path, sample_files) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from polyglot_distil.models.smoke import build_smoke_model

    folder = build_smoke_model(root / "float", "bert", vocab_file=fixed_vocab(root / "vocab.txt", sample_files, 300),
                               head="sequence-classification", num_layers=2)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * (1.0 if "classifier" in name else 0.3))
    model.save_pretrained(folder)
    return folder


def inputs(folder: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    lines = (CORPORA / "fr" / "sample.txt").read_text(encoding="utf-8").splitlines()[:6]
    return tokenizer(lines[:3], lines[3:6], return_tensors="pt", padding=True, truncation=True, max_length=64)


def float_model(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def test_fake_quantization_at_8_bits_with_the_observed_scale_is_within_half_a_step():
    import torch

    from polyglot_distil.distill.quantize import lsq_quantize
    from polyglot_distil.models.quantized import fake_quantize, observed_scales

    weight = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 2, 16)[:, None]
    scale = observed_scales(weight, 8)
    error = (fake_quantize(weight, scale, 8) - weight).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert error.max() > scale.min() / 10  # it does round
    assert torch.allclose(scale, weight.abs().amax(1) / 127)
    # LSQ's forward is the same fake quantization (to float rounding: the straight-through sums)
    levels = lsq_quantize(weight, scale[:, None], 127, 0.1) / scale[:, None]
    assert torch.equal(levels.round(), fake_quantize(weight, scale, 8).div(scale[:, None]).round())
    assert (levels - levels.round()).abs().max() < 1e-4


def test_dynamic_int8_loads_back_with_one_call_and_computes_with_the_stored_integers(tmp_path, classifier):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from polyglot_distil.models.quantized import load_int8, observed_scales, quantize_rows

    assert run_cli("quantize", "--model", classifier, "--out", tmp_path / "int8") == 0
    model = load_int8(tmp_path / "int8")
    reference = float_model(classifier)
    query = "bert.encoder.layer.1.attention.self.query"
    float_weight = reference.get_submodule(query).weight
    stored = model.get_submodule(query).weight()
    assert torch.equal(stored.int_repr(), quantize_rows(float_weight, observed_scales(float_weight), 8))
    int8_linear = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(int8_linear) == 14  # every Linear, the pooler and the head too
    batch = inputs(classifier)
    with torch.no_grad():
        got, expected = model(**batch).logits, reference(**batch).logits
    # int8 weights, and activations rounded per batch: near the float logits (a model put together
    # wrongly, e.g. with random weights, is nowhere near), the same labels
    assert (got - expected).abs().max() < 0.25 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    record = json.loads((tmp_path / "int8" / "int8.json").read_text())
    assert record["method"] == "dynamic" and record["embeddings"] == []
    assert "bert.embeddings.word_embeddings.weight" in load_file(tmp_path / "int8" / "model_int8.safetensors")
    with pytest.raises(OSError):  # never mistaken for a float model with random weights
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "int8")


def test_full_8_bit_activations_are_closer_to_float_than_pytorchs_default_7_bits(monkeypatch):
    import torch

    from polyglot_distil.models.quantized import ACTIVATION_BITS_VARIABLE, activation_bits

    monkeypatch.delenv(ACTIVATION_BITS_VARIABLE, raising=False)
    if activation_bits() != 8:  # x86 without VNNI: 8-bit activations saturate FBGEMM's 16-bit pair sums
        pytest.skip("this CPU's int8 kernel (x86 without VNNI) keeps 7-bit activations; load_int8 never uses 8 here")

    from polyglot_distil.models.quantized import int8_linear, observed_scales, quantize_rows

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 128, generator=generator), torch.randn(96, generator=generator)
    x = torch.randn(64, 128, generator=generator) * torch.rand(1, 128, generator=generator) * 4  # uneven features
    scale = observed_scales(weight)
    integers = quantize_rows(weight, scale)
    exact = x @ (integers.float() * scale[:, None]).T + bias  # the stored weights, float activations
    with torch.no_grad():
        error = {bits: (int8_linear(integers, scale, bias, bits)(x) - exact).abs().mean().item() for bits in (7, 8)}
    # one more bit of activation: about half the rounding error
    assert error[8] < 0.65 * error[7], error


def test_the_activation_bits_follow_the_cpu_unless_the_environment_says(monkeypatch):
    import torch

    from polyglot_distil.models.quantized import ACTIVATION_BITS_VARIABLE, activation_bits

    monkeypatch.delenv(ACTIVATION_BITS_VARIABLE, raising=False)
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags or torch.backends.quantized.engine == "qnnpack"
    assert activation_bits() == (8 if vnni else 7)
    monkeypatch.setenv(ACTIVATION_BITS_VARIABLE, "7")
    assert activation_bits() == 7
    monkeypatch.setenv(ACTIVATION_BITS_VARIABLE, "9")
    with pytest.raises(UserError, match="must be 7 or 8"):
        activation_bits()


def test_int8_embeddings_halve_the_weights_on_disk_and_keep_the_rows(tmp_path, classifier):
    import torch

    from polyglot_distil.models.quantized import load_int8

    assert run_cli("quantize", "--model", classifier, "--out", tmp_path / "int8", "--embeddings", "int8") == 0
    report = json.loads((tmp_path / "int8" / "quantize.json").read_text())
    assert report["int8_bytes"] < report["float_bytes"] / 2
    model, reference = load_int8(tmp_path / "int8"), float_model(classifier)
    words = model.bert.embeddings.word_embeddings
    ids = torch.arange(words.num_embeddings)
    table = reference.bert.embeddings.word_embeddings.weight
    step = table.abs().amax(1) / 127
    assert ((words(ids) - table).abs() <= step[:, None] / 2 * (1 + 1e-5)).all()


def test_a_qat_int8_folder_holds_the_learned_steps_and_the_integers_they_give(tmp_path, classifier):
    import torch

    from polyglot_distil.distill.quantize import fake_quantize_model, learned_steps
    from polyglot_distil.models.quantized import load_int8, save_int8

    model = float_model(classifier)
    fake_quantize_model(model, 4, activations=False, step_init="auto")
    name = "bert.encoder.layer.0.intermediate.dense"
    layer = model.get_submodule(name)
    with torch.no_grad():
        layer.weight_step.mul_(1.3)  # as if trained
    (tmp_path / "qat").mkdir()
    save_int8(model, tmp_path / "qat", 4, "qat", learned_steps(model))
    loaded = load_int8(tmp_path / "qat").get_submodule(name).weight()
    expected = torch.clamp(torch.round(layer.weight / layer.weight_step[:, None]), -7, 7)
    assert torch.equal(loaded.int_repr().float(), expected)
    assert torch.allclose(loaded.q_per_channel_scales().float(), layer.weight_step.detach())
    assert torch.allclose(loaded.dequantize(), layer.quantized_weight().detach(), atol=1e-6)


def test_quantized_activations_start_from_lsq_steps_of_the_first_batch(classifier):
    import math

    import torch

    from polyglot_distil.distill.quantize import calibrate_input_steps, fake_quantize_model, lsq_quantize

    model = float_model(classifier)
    fake_quantize_model(model, 4, activations=True, step_init="auto")
    seen = {}

    def record(module, args) -> None:
        seen.setdefault("x", args[0].detach())

    layer = model.get_submodule("bert.encoder.layer.1.output.dense")
    layer.register_forward_pre_hook(record)
    batch = inputs(classifier)
    calibrate_input_steps(model, batch)
    assert layer.input_step.item() == pytest.approx(2 * seen["x"].abs().mean().item() / math.sqrt(7), rel=1e-5)
    with torch.no_grad():  # the layer computes on inputs rounded to the 4-bit grid of that step
        x, step = seen["x"], layer.input_step
        rounded = lsq_quantize(x, step, 7, 1.0)
        levels = rounded / step
        assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 7
        assert torch.allclose(layer(x), torch.nn.functional.linear(rounded, layer.quantized_weight(), layer.bias))


def qat(out: Path, model: Path, *extra) -> list[dict]:
    from conftest import metrics_rows

    nli = CORPORA / "nli"
    status = run_cli("quantize", "--model", model, "--method", "qat", "--train", nli / "train-en.tsv",
                     "--dev", nli / "dev-en.tsv", "--max-train-pairs", "64", "--batch-size", "16",
                     "--epochs", "1", "--log-every", "1", "--no-progress", "--out", out, *extra)
    assert status == 0
    return metrics_rows(out, "train")


@pytest.mark.slow
def test_qat_with_the_teacher_as_its_own_student_keeps_the_loss_near_zero(tmp_path, classifier):
    eight = qat(tmp_path / "q8", classifier)
    two = qat(tmp_path / "q2", classifier, "--bits", "2")
    assert len(eight) == 4 and all(row["loss"] < 5e-3 for row in eight)
    assert all(0 <= row["logits"] < 5e-3 for row in eight)  # a KL: 0 for a student equal to its teacher
    assert min(row["loss"] for row in two) > 100 * max(row["loss"] for row in eight)  # the loss does see rounding
    inputs_too = qat(tmp_path / "q8a", classifier, "--quantize-activations")
    assert max(row["loss"] for row in eight) < min(row["loss"] for row in inputs_too) < min(row["loss"] for row in two)
    for out in ("best", "final"):
        assert json.loads((tmp_path / "q8" / out / "int8.json").read_text())["method"] == "qat"
    assert run_cli("eval", "xnli", "--model", tmp_path / "q8" / "best", "--baseline", classifier, "--langs", "fr",
                   "--data", CORPORA / "nli", "--no-efficiency", "--no-progress", "--out", tmp_path / "eval") == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["results"]["fr"]["agreement_with_baseline"] >= 0.9


@pytest.mark.slow
def test_qat_on_the_embedding_rows_its_pairs_use_converts_bitwise_the_model_of_full_training(tmp_path, classifier,
                                                                                             capsys):
    """--reduce-vocab: QAT has no weight decay, so rows the pairs never use never move; the int8
    folders (embeddings int8 too, every row converted) equal full training's, and so do the losses."""
    full = qat(tmp_path / "full", classifier, "--embeddings", "int8", "--dropout", "0.1")
    capsys.readouterr()
    reduced = qat(tmp_path / "reduced", classifier, "--embeddings", "int8", "--dropout", "0.1", "--reduce-vocab")
    used, rows = (int(n.replace(",", "")) for n in
                  capsys.readouterr().err.split("training ", 1)[1].split(" embedding rows")[0].split(" of the "))
    assert 0 < used < rows
    assert reduced == full
    for out in ("best", "final"):
        assert (tmp_path / "reduced" / out / "model_int8.safetensors").read_bytes() == \
            (tmp_path / "full" / out / "model_int8.safetensors").read_bytes()


def test_what_cannot_be_quantized_is_one_line(tmp_path, capsys, classifier):
    import torch

    from polyglot_distil.models.quantized import int8_tensors

    with pytest.raises(UserError, match="has no Linear layer to quantize"):
        int8_tensors(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)), 8)
    assert run_cli("quantize", "--model", classifier, "--bits", "4", "--out", tmp_path / "q") == 2
    assert run_cli("quantize", "--model", classifier, "--train", "x.tsv", "--out", tmp_path / "q") == 2
    assert run_cli("quantize", "--model", classifier, "--method", "qat", "--out", tmp_path / "q") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: --bits 4: post-training quantization is int8 only; fewer bits need --method qat, which trains the steps",
        "error: --train applies to --method qat only (this is --method dynamic)",
        "error: --method qat trains: pass --train SOURCE and --dev SOURCE (English NLI pairs)"]
    assert not (tmp_path / "q").exists()


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, capsys, classifier):
    out = tmp_path / "int8"
    assert run_cli("quantize", "--model", classifier, "--out", out) == 0
    assert run_cli("quantize", "--model", classifier, "--out", out) == 2
    assert capsys.readouterr().err.strip() == f"error: {out} already exists; pass --overwrite to replace it"
    assert run_cli("quantize", "--model", classifier, "--out", out, "--embeddings", "int8", "--overwrite") == 0
    assert json.loads((out / "int8.json").read_text())["embeddings"]
    assert run_cli("quantize", "--model", out, "--out", tmp_path / "again") == 2
    assert "already an int8 model" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_qat_run_resumes_to_the_same_int8_model(tmp_path, classifier):
    import shutil

    options = ("--save-every", "2", "--eval-every", "2", "--keep-checkpoints", "3", "--bits", "4",
               "--quantize-activations")
    qat(tmp_path / "run", classifier, *options)
    finished = (tmp_path / "run" / "final" / "model_int8.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-4")  # as if stopped after step 2's checkpoint
    shutil.rmtree(tmp_path / "run" / "final")
    qat(tmp_path / "run", classifier, *options, "--resume")
    assert (tmp_path / "run" / "final" / "model_int8.safetensors").read_bytes() == finished
