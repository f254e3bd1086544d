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


def test_xlmr_runs_through_student_phase_1_finetune_and_phase_2(tmp_path, xlmr_source):
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
    assert run_cli("finetune", "--model", xlmr_source, "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--epochs", 0.1, "--batch-size", 8, "--no-progress", "--out", tmp_path / "teacher") == 0
    assert run_cli("distil", "task", "--teacher", tmp_path / "teacher" / "best", "--student",
                   tmp_path / "general" / "final", "--train", NLI / "train-en.tsv", "--dev", NLI / "dev-en.tsv",
                   "--full-epochs", 0.1, "--sparse-epochs", 0.1, "--batch-size", 8, "--log-every", 1,
                   "--no-progress", "--out", tmp_path / "task") == 0
    rows = metrics_rows(tmp_path / "task", "train")
    assert {r["stage"] for r in rows} == {"full", "sparse"}
    assert all(r["loss"] == r["loss"] for r in rows)  # finite, not NaN


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
