"""`verify`: passes a correct trim with every figure reported, and fails (exit 1) on each defect
the other tools have: a changed embedding row, Geotrend's truncated MLM bias, a tokenizer
that lost its casing. Long texts are skipped and counted; uncovered texts are not failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import CORPORA, run_cli
from polyglot_distil.data.corpus import Caps, iter_language, parse_sources
from polyglot_distil.vocab.count import count_corpora
from polyglot_distil.vocab.verify import compare_texts, load_pair
from polyglot_distil.vocab.select import Rules

EN, FR = CORPORA / "en" / "sample.txt", CORPORA / "fr" / "sample.txt"


def lines_of(path: Path, n: int = 60) -> list[str]:
    return list(iter_language(parse_sources([str(path)]), Caps(max_lines=n, sample="head")))


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT with a random MLM output bias (a zero bias hides truncation)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("verify") / "source"
    shutil.copytree(tiny_bert_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["cls.predictions.bias"] = torch.randn(weights["cls.predictions.bias"].shape)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def trimmed(source) -> Path:
    from polyglot_distil.vocab.trim import trim

    counts = count_corpora(str(source), {"en": parse_sources([str(EN)]), "fr": parse_sources([str(FR)])},
                           show_progress=False)
    out = source.parent / "trimmed"
    trim(str(source), counts, ["en", "fr"], Rules(min_count=3), out, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def pair(source, trimmed):
    return load_pair(str(source), trimmed)


def broken_copy(trimmed: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(trimmed, folder)
    return folder


def edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def verify(source, folder, tmp_path, *extra) -> tuple[int, dict]:
    report = tmp_path / "verify.json"
    code = run_cli("verify", "--original", source, "--trimmed", folder, "--lang", f"en={EN}", "--lang", f"fr={FR}",
                   "--max-lines", "60", "--report", report, "--overwrite", "--no-progress", *extra)
    return code, json.loads(report.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_correct_trim_passes_with_every_figure_reported(source, trimmed, tmp_path, capsys):
    code, report = verify(source, trimmed, tmp_path)
    assert code == 0 and "identical on every covered text" in capsys.readouterr().out
    for lang in ("en", "fr"):
        r = report[lang]
        assert r["texts"] == 60 and 0 < r["covered_share"] < 1  # min_count 3 drops rare tokens
        assert r["identical"] == r["covered"] and r["compared"] == r["covered"] - r["too_long"]
        assert r["max_hidden_diff"] == 0.0 and r["max_logit_diff"] == 0.0
        assert r["unk_rate_before"] == 0.0 < r["unk_rate_after"]
        assert r["passed"]


@pytest.mark.slow
def test_a_changed_embedding_row_fails(source, trimmed, tmp_path, pair):
    folder = broken_copy(trimmed, tmp_path)
    row = pair[3].convert_tokens_to_ids("the")

    def nudge(weights):
        weights["bert.embeddings.word_embeddings.weight"][row, 0] += 1e-3

    edit_weights(folder, nudge)
    code, report = verify(source, folder, tmp_path)
    assert code == 1
    assert report["en"]["differing"] > 0 and report["en"]["max_hidden_diff"] > 0


@pytest.mark.slow
def test_a_truncated_mlm_bias_fails_on_logits_alone(source, trimmed, tmp_path):
    """Geotrend's released code keeps the first N bias entries instead of the kept ones."""
    from safetensors.torch import load_file

    folder = broken_copy(trimmed, tmp_path)
    full_bias = load_file(source / "model.safetensors")["cls.predictions.bias"]

    def truncate(weights):
        weights["cls.predictions.bias"] = full_bias[: len(weights["cls.predictions.bias"])].clone()

    edit_weights(folder, truncate)
    code, report = verify(source, folder, tmp_path)
    assert code == 1
    assert report["fr"]["max_hidden_diff"] == 0.0 and report["fr"]["max_logit_diff"] > 0


def test_a_tokenizer_that_lost_its_casing_fails(source, trimmed, tmp_path):
    """A cased vocabulary saved without its tokenizer_config comes back lower-casing."""
    folder = broken_copy(trimmed, tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": True}), encoding="utf-8")
    code, report = verify(source, folder, tmp_path)
    assert code == 1
    assert report["en"]["identical"] < report["en"]["covered"] and report["en"]["differing"] > 0


def test_texts_longer_than_the_model_are_skipped_and_counted(pair):
    covered = "the cat is on the mat ."
    result = compare_texts(*pair[:4], pair[4], [covered, " ".join([covered] * 40)])
    assert result.covered == 2 and result.too_long == 1 and result.compared == 1
    assert result.passed


def test_uncovered_text_lowers_coverage_but_is_no_failure(pair):
    result = compare_texts(*pair[:4], pair[4], ["Zygomorphic xylophones quizzically vex jumbo wharf bedpans"])
    assert result.covered == 0 and result.compared == 0 and result.unk_after > result.unk_before == 0
    assert result.passed


def test_the_original_decoder_is_restored_after_comparing(pair):
    original = pair[0]
    decoder = original.get_output_embeddings()
    compare_texts(*pair[:4], pair[4], ["the cat"])
    assert original.get_output_embeddings() is decoder
    with torch.inference_mode():
        logits = original(input_ids=torch.tensor([[2, 3]])).logits
    assert logits.shape[-1] == original.config.vocab_size


def test_a_folder_without_trim_report_is_refused(source, tiny_bert_dir, capsys):
    code = run_cli("verify", "--original", source, "--trimmed", tiny_bert_dir, "--lang", f"en={EN}", "--no-progress")
    assert code == 2 and "has no trim_report.json" in capsys.readouterr().err


def test_a_trim_of_another_model_is_refused(trimmed, tiny_xlmr_dir, capsys):
    code = run_cli("verify", "--original", tiny_xlmr_dir, "--trimmed", trimmed, "--lang", f"en={EN}", "--no-progress")
    assert code == 2 and "is not a vocabulary trim of" in capsys.readouterr().err


@pytest.mark.slow
def test_a_language_the_trim_barely_covers_fails_instead_of_passing_on_nothing(tmp_path, source, trimmed, capsys):
    """Text in a language the counts never saw: almost nothing is covered, so nothing vouches for
    the trim there; verify fails with the covered share (unless --min-coverage is lowered)."""
    folder = trimmed
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["Ukubwa wa jiji hili ni mkubwa sana kuliko wote"] * 20), encoding="utf-8")
    options = ["verify", "--original", source, "--trimmed", folder, "--lang", f"sw={other}", "--no-progress"]
    assert run_cli(*options) == 1
    err = capsys.readouterr().err
    assert "too little text is covered" in err and "sw: 0 of 20 texts (0.0%)" in err
    assert run_cli(*options, "--min-coverage", 0) == 0
