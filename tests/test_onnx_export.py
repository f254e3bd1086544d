"""`export onnx`: a graph with dynamic batch and sequence axes whose outputs equal PyTorch's within
1e-4, that `eval xnli` evaluates beside its float model; an opset that cannot express a layer, an
int8 model and an existing output each give one clear line and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPORA, run_cli
from test_quantize import spread_classifier

pytest.importorskip("onnxruntime", reason="needs onnxruntime and onnx: pip install 'polyglot-distil[onnx]'")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, sample_files) -> Path:
    return spread_classifier(tmp_path_factory.mktemp("onnx_model"), sample_files)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, classifier) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "graph"
    assert run_cli("export", "onnx", "--model", classifier, "--out", out, "--int8",
                   "--check-text", CORPORA / "fr" / "sample.txt", "--check-lines", "24") == 0
    return out


@pytest.mark.slow
def test_the_graph_gives_pytorchs_outputs_within_1e_4_at_any_batch_size_and_length(exported, classifier):
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    report = json.loads((exported / "export.json").read_text())
    assert report["max_abs_difference"]["float"] <= 1e-4 and "24 lines" in report["checked_on"]
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and report["output"] == "logits"
    model = AutoModelForSequenceClassification.from_pretrained(classifier, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    graph = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    lines = (CORPORA / "en" / "sample.txt").read_text(encoding="utf-8").splitlines()
    for premises, hypotheses in ((lines[:5], lines[5:10]), (lines[20:21], lines[21:22])):  # batch 5 and 1
        batch = tokenizer(premises, hypotheses, padding=True, truncation=True, max_length=100, return_tensors="np")
        got = graph.run(None, {k: batch[k].astype(np.int64) for k in report["inputs"]})[0]
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(batch[k]) for k in report["inputs"]}).logits.numpy()
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
    assert (exported / "model_int8.onnx").is_file() and report["max_abs_difference"]["int8"] > 0  # it rounds


@pytest.mark.slow
def test_eval_xnli_runs_the_graph_beside_its_float_model(tmp_path, exported, classifier):
    assert run_cli("eval", "xnli", "--model", exported, "--baseline", classifier, "--langs", "fr,en",
                   "--data", CORPORA / "nli", "--max-pairs", "30", "--no-efficiency", "--no-progress",
                   "--out", tmp_path / "eval") == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for lang in ("fr", "en"):
        result = report["results"][lang]
        assert result["agreement_with_baseline"] == 1.0
        assert result["accuracy"]["model"] == result["accuracy"]["baseline"]
    efficiency = report["efficiency"]
    # the exporter stores equal tensors once (a smoke model's zero biases, unit LayerNorm weights)
    assert 0.9 < efficiency["model"]["params_total"] / efficiency["baseline"]["params_total"] <= 1
    assert efficiency["model"]["disk_bytes"] == (exported / "model.onnx").stat().st_size
    assert "Agreement with the baseline" in (tmp_path / "eval" / "REPORT.md").read_text()


def test_an_opset_that_cannot_express_a_layer_is_one_line(tmp_path, capsys, classifier):
    assert run_cli("export", "onnx", "--model", classifier, "--out", tmp_path / "old", "--opset", "9") == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --opset 9 cannot express a layer of this model: ")
    assert len(captured.err.strip().splitlines()) == 1 and "graph(" not in captured.out
    assert not (tmp_path / "old").exists()


@pytest.mark.slow
def test_an_int8_model_or_an_existing_output_is_one_line(tmp_path, capsys, classifier, exported):
    assert run_cli("quantize", "--model", classifier, "--out", tmp_path / "int8") == 0
    capsys.readouterr()
    assert run_cli("export", "onnx", "--model", tmp_path / "int8", "--out", tmp_path / "graph") == 2
    assert run_cli("export", "onnx", "--model", classifier, "--out", exported) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'int8'} is an int8 PyTorch model, which ONNX cannot take; export the float "
                     "model it was made from, with --int8 for onnxruntime's int8 variant",
                     f"error: {exported} already exists; pass --overwrite to replace it"]
    assert not (tmp_path / "graph").exists()
