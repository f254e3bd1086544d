"""`vocab/verify.py`'s loading and command on tiny models saved to folders (a BERT with an MLM head,
one with a pooler too) around the hand-made 12-token WordPiece of tests/test_verify_units.py, trimmed
in memory: `trim_report.json`'s `old_ids` are read or refused in one line, a folder that is not a
trim of the original is refused, both models load in float32, eager and eval mode with the
pretrained poolers when both have one, and the command prints the table, writes the report and
exits 1 on a difference or on too little covered text. tests/test_verify.py proves the same
through the command on a trained tiny model; these are the fast unit tests docs/mutation.md runs
each mutant against (about 15 s in all)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as t  # imported at collection: mutation runs fork after it
from transformers.models.bert import modeling_bert  # noqa: F401

from polyglot_distil.errors import UserError
from polyglot_distil.vocab import verify
from polyglot_distil.vocab.trim_model import trim_model_vocab
from polyglot_distil.vocab.trim_tokenizer import trim_tokenizer
from polyglot_distil.vocab.verify import LanguageCheck, VerifySettings, load_pair, read_old_ids, run_verify, \
    verify_equivalence, verify_table
from test_trim_model import randomised
from test_trim_tokenizer import wordpiece
from test_verify_units import KEPT, bert_config

COVERED = ["ab b", "a b ab", "b a"]  # every token kept
UNCOVERED = ["abc", "c a"]  # "abc", "c": not kept


@pytest.fixture(autouse=True)
def no_loading_bars():
    """transformers' "Loading weights" bars on stderr, where the command's one-line verdicts go."""
    t.utils.logging.disable_progress_bar()
    yield
    t.utils.logging.enable_progress_bar()


def save_pair(folder: Path, model, dtype=torch.float32) -> tuple[Path, Path]:
    """`model` (random weights) and its trim to KEPT saved as ORIGINAL and TRIMMED, with
    trim_report.json's old_ids."""
    original, trimmed = folder / "original", folder / "trimmed"
    model = randomised(model).to(dtype)
    model.save_pretrained(original)
    wordpiece().save_pretrained(original)
    small = copy.deepcopy(model)
    trim_model_vocab(small, KEPT)
    small.save_pretrained(trimmed)
    trim_tokenizer(wordpiece(), KEPT).save_pretrained(trimmed)
    (trimmed / "trim_report.json").write_text(json.dumps({"old_ids": KEPT.tolist(), "kept": len(KEPT)}))
    return original, trimmed


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> tuple[Path, Path]:
    """A BERT with an MLM head and no pooler, saved in bfloat16."""
    return save_pair(tmp_path_factory.mktemp("mlm"), t.BertForMaskedLM(bert_config()), torch.bfloat16)


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory) -> tuple[Path, Path]:
    """A BERT with MLM and next-sentence heads and a pooler."""
    return save_pair(tmp_path_factory.mktemp("pretraining"), t.BertForPreTraining(bert_config()))


def broken_copy(trimmed: Path, folder: Path) -> Path:
    import shutil

    copied = folder / "broken"
    shutil.copytree(trimmed, copied)
    return copied


# ---------------------------------------------------------------------------------------------
# read_old_ids, load_pair


def test_old_ids_are_read_from_the_trim_report_as_int64(mlm):
    old_ids = read_old_ids(mlm[1])
    assert old_ids.dtype == np.int64 and old_ids.tolist() == KEPT.tolist()
    assert read_old_ids(str(mlm[1])).tolist() == KEPT.tolist()


def test_a_folder_without_a_trim_report_is_named_in_one_line(mlm):
    with pytest.raises(UserError, match=rf"^{mlm[0]} has no trim_report.json: pass a folder written by "
                                        r"'polyglot-distil trim'$"):
        read_old_ids(mlm[0])


@pytest.mark.parametrize("report, reason", [('{"kept": 8}', "'old_ids'"),
                                            ('{"old_ids": [0, 1', "Expecting"),
                                            ('{"old_ids": ["a"]}', "invalid literal")])
def test_a_trim_report_without_readable_old_ids_is_named_with_why(mlm, tmp_path, report, reason):
    copied = broken_copy(mlm[1], tmp_path)
    (copied / "trim_report.json").write_text(report)
    with pytest.raises(UserError, match=rf"^{copied / 'trim_report.json'}: no readable 'old_ids' list \(.*{reason}"):
        read_old_ids(copied)


def test_both_models_load_in_float32_eager_and_eval_mode_with_their_tokenizers(mlm):
    original, original_tokenizer, trimmed, trimmed_tokenizer, old_ids, poolers = load_pair(str(mlm[0]), mlm[1])
    for model, vocab in ((original, 12), (trimmed, len(KEPT))):
        assert type(model).__name__ == "BertForMaskedLM" and not model.training
        assert model.config._attn_implementation == "eager" and model.dtype == torch.float32
        assert model.get_input_embeddings().num_embeddings == vocab
    assert len(original_tokenizer) == 12 and len(trimmed_tokenizer) == len(KEPT)
    assert old_ids.tolist() == KEPT.tolist() and poolers is None  # no pooler in these checkpoints


def test_a_tokenizer_already_loaded_is_used_and_remote_code_is_trusted_for_the_original_only(pretraining,
                                                                                            monkeypatch):
    calls = []
    for name in ("load_model", "load_tokenizer"):
        real = getattr(verify, name)
        monkeypatch.setattr(verify, name, lambda path, *args, real=real, name=name, **kwargs: calls.append(
            (name, Path(path).name, [a for a in args if isinstance(a, bool)], kwargs.get("trust_remote_code"))) or
            real(path, *args, **kwargs))
    given = wordpiece()
    pair = load_pair(str(pretraining[0]), pretraining[1], trust_remote_code=True, original_tokenizer=given)
    assert pair[1] is given
    # the original loads its model and its pooler, both trusted; the trimmed folder its config, model and pooler
    trusted = [(name, folder) for name, folder, flags, keyword in calls if True in flags or keyword]
    assert trusted == [("load_model", "original")] * 2  # the model and its pooler
    assert [c[:2] for c in calls].count(("load_model", "trimmed")) == 3  # its config, the model, its pooler
    assert ("load_tokenizer", "trimmed", [], None) in calls and ("load_tokenizer", "original") not in {
        c[:2] for c in calls}
    calls.clear()
    load_pair(str(pretraining[0]), pretraining[1])
    assert ("load_tokenizer", "original", [False], None) in calls
    assert not [c for c in calls if True in c[2] or c[3]]


def test_the_pretrained_poolers_are_loaded_when_both_checkpoints_have_one(pretraining):
    from safetensors.torch import load_file

    from polyglot_distil.models.checkpoint import checkpoint_files

    original, _, trimmed, _, _, poolers = load_pair(str(pretraining[0]), pretraining[1])
    assert type(original).__name__ == type(trimmed).__name__ == "BertForPreTraining"
    for pooler, folder in zip(poolers, pretraining):
        assert type(pooler).__name__ == "BertModel" and not pooler.training and pooler.dtype == torch.float32
        assert pooler.config._attn_implementation == "eager"
        saved = load_file(checkpoint_files(folder)[0])["bert.pooler.dense.weight"]
        assert torch.equal(pooler.pooler.dense.weight, saved)
    assert poolers[0].get_input_embeddings().num_embeddings == 12
    assert poolers[1].get_input_embeddings().num_embeddings == len(KEPT)


@pytest.mark.parametrize("side", [0, 1])
def test_a_pooler_in_one_checkpoint_only_is_not_compared(pretraining, tmp_path, side):
    import shutil

    from safetensors.torch import load_file, save_file

    pair = [tmp_path / "original", tmp_path / "trimmed"]
    for folder, copied in zip(pretraining, pair):
        shutil.copytree(folder, copied)
    weights = load_file(pair[side] / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, pair[side] / "model.safetensors",
              metadata={"format": "pt"})
    assert load_pair(str(pair[0]), pair[1])[5] is None


@pytest.mark.parametrize("change", ["fewer", "out of range", "other token"])
def test_a_folder_that_is_not_a_trim_of_the_original_is_refused_in_one_line(mlm, tmp_path, change):
    copied = broken_copy(mlm[1], tmp_path)
    old_ids = KEPT.tolist()
    if change == "fewer":
        old_ids = old_ids[:-1]
    elif change == "out of range":
        old_ids[-1] = 12
    else:
        old_ids[4], old_ids[5] = old_ids[5], old_ids[4]  # "a" and "b" swapped
    (copied / "trim_report.json").write_text(json.dumps({"old_ids": old_ids}))
    with pytest.raises(UserError, match=rf"^{copied} is not a vocabulary trim of {mlm[0]}: its tokens are not the "
                                        r"original's tokens at old_ids$"):
        load_pair(str(mlm[0]), copied)


def test_old_ids_that_reach_the_last_original_token_are_a_trim(mlm, tmp_path):
    copied = broken_copy(mlm[1], tmp_path)
    (copied / "trim_report.json").write_text(json.dumps({"old_ids": KEPT.tolist()}))
    assert KEPT[-1] == 11 and load_pair(str(mlm[0]), copied)[4][-1] == 11  # 11 < 12 tokens: allowed


# ---------------------------------------------------------------------------------------------
# verify_equivalence, verify_table


@pytest.mark.slow
def test_each_language_is_compared_with_its_own_progress_bar(mlm, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **options):
            self.options, self.updates, self.closed = options, [], False
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def close(self):
            self.closed = True

    monkeypatch.setattr(verify, "progress", lambda **options: Bar(**options))
    trusted = []
    load_pair = verify.load_pair
    monkeypatch.setattr(verify, "load_pair", lambda *args: trusted.append(args[2]) or load_pair(*args))
    results = verify_equivalence(str(mlm[0]), mlm[1], {"en": COVERED, "fr": COVERED[:1] + UNCOVERED}, batch_size=2,
                                 show_progress=False)
    assert list(results) == ["en", "fr"] and all(r.passed for r in results.values())
    assert (results["en"].texts, results["en"].compared, results["fr"].covered, results["fr"].compared) == (3, 3, 1, 1)
    assert results["en"].max_logit_diff == 0.0  # the MLM head was compared
    assert [b.options for b in bars] == [{"total": 3, "desc": "verify en", "unit": " texts", "show": False},
                                         {"total": 3, "desc": "verify fr", "unit": " texts", "show": False}]
    assert [b.updates for b in bars] == [[2, 1], [1]] and all(b.closed for b in bars)
    verify_equivalence(str(mlm[0]), mlm[1], {"en": COVERED * 3}, original_tokenizer=wordpiece())
    assert bars[-1].options["show"] is None and bars[-1].updates == [8, 1]  # 8 texts a batch by default
    assert trusted == [False, False]  # no remote code unless asked
    from tokenizers import normalizers

    lowercasing = wordpiece()
    lowercasing.backend_tokenizer.normalizer = normalizers.Lowercase()  # the tokenizer given, not the folder's
    check = verify_equivalence(str(mlm[0]), mlm[1], {"en": ["AB b"]}, original_tokenizer=lowercasing)["en"]
    assert (check.covered, check.identical, check.differing) == (1, 0, 1)
    verify_equivalence(str(mlm[0]), mlm[1], {"en": COVERED}, trust_remote_code=True)
    assert trusted[-1] is True


def test_the_pooler_is_compared_when_both_have_one(pretraining):
    results = verify_equivalence(str(pretraining[0]), pretraining[1], {"en": COVERED})
    assert results["en"].max_pooler_diff == 0.0 and results["en"].passed


def test_the_table_has_a_row_per_language_with_every_figure():
    checks = {
        "en": LanguageCheck(texts=1234, covered=1000, identical=617, too_long=1500, compared=2500, differing=0,
                            tokens_before=3000, unk_before=3, tokens_after=4000, unk_after=40, max_hidden_diff=0.0,
                            max_logit_diff=0.0, max_pooler_diff=0.0, generated=1200),
        "fr": LanguageCheck(texts=3, covered=2, identical=1, too_long=0, compared=2, differing=2, tokens_before=10,
                            unk_before=0, tokens_after=10, unk_after=0, max_hidden_diff=0.125),
    }
    assert verify_table(checks).splitlines() == [
        "lang  texts  covered  identical  unk before  unk after  too long  compared  max|dh|  max|dlogits|  "
        "max|dpooler|  generated    result",
        "en    1,234    81.0%      50.0%      0.100%     1.000%     1,500     2,500        0             0  "
        "           0      1,200     equal",
        "fr        3    66.7%      33.3%      0.000%     0.000%         0         2    0.125             -  "
        "           -          -  2 DIFFER",
    ]
    assert verify_table({}) == verify_table({"x": LanguageCheck()}).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# VerifySettings, run_verify


def settings(pair, tmp_path, texts, **options) -> VerifySettings:
    source = tmp_path / "en.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return VerifySettings(original=str(pair[0]), trimmed=str(pair[1]), lang=[f"en={source}"], no_progress=True,
                          **options)


@pytest.mark.parametrize("options, message", [
    ({"max_lines": 0}, r"^--max-lines and --batch-size must be at least 1$"),
    ({"batch_size": 0}, r"^--max-lines and --batch-size must be at least 1$"),
    ({"min_coverage": -0.01}, r"^--min-coverage must be between 0 and 1, not -0.01$"),
    ({"min_coverage": 1.01}, r"^--min-coverage must be between 0 and 1, not 1.01$"),
])
def test_settings_out_of_range_are_refused_in_one_line(options, message):
    with pytest.raises(UserError, match=message):
        VerifySettings(original="o", trimmed="t", lang=["en=x"], **options)


def test_settings_at_their_bounds_are_allowed():
    for options in ({"max_lines": 1, "batch_size": 1, "min_coverage": 0.0}, {"min_coverage": 1.0}):
        VerifySettings(original="o", trimmed="t", lang=["en=x"], **options)


def test_an_equal_trim_reports_the_table_writes_the_report_and_exits_0(mlm, tmp_path, capsys):
    report_path = tmp_path / "out" / "verify.json"
    report_path.parent.mkdir()
    report = run_verify(settings(mlm, tmp_path, COVERED + UNCOVERED[:1], report=str(report_path)))
    out, err = capsys.readouterr()
    assert report["exit_status"] == 0 and err == "" and out == ""  # the command prints report["lines"]
    lines = report["lines"]
    assert lines[0].startswith("lang  texts") and lines[1].startswith("en        4    75.0%")
    assert lines[1].endswith("equal") and lines[2:] == ["verify: identical on every covered text"]
    expected = report["languages"]["en"]
    assert (expected["texts"], expected["covered"], expected["compared"], expected["passed"]) == (4, 3, 3, True)
    assert json.loads(report_path.read_text(encoding="utf-8")) == {"en": expected}
    assert report_path.read_text(encoding="utf-8").startswith('{\n "en": {\n  "texts": 4,')  # indent=1
    assert list(report_path.parent.iterdir()) == [report_path]


@pytest.mark.slow
def test_the_lines_are_a_seeded_sample_of_max_lines(mlm, tmp_path, capsys, monkeypatch):
    seen = []
    real = verify.verify_equivalence
    monkeypatch.setattr(verify, "verify_equivalence", lambda *args, **kwargs: seen.append((args, kwargs)) or
                        real(*args, **kwargs))
    texts = [f"{'a ' * (i % 3)}b" for i in range(40)]
    run_verify(settings(mlm, tmp_path, texts, max_lines=5, seed=3, batch_size=3, trust_remote_code=False))
    run_verify(settings(mlm, tmp_path, texts, max_lines=5, seed=3))
    run_verify(settings(mlm, tmp_path, texts, max_lines=5, seed=4))
    (first, options), (second, _), (third, _) = seen
    assert first[:2] == (str(mlm[0]), str(mlm[1])) and len(first[2]["en"]) == 5
    assert options == {"batch_size": 3, "trust_remote_code": False, "show_progress": False}
    assert first[2] == second[2] and first[2] != third[2]
    run_verify(VerifySettings(original=str(mlm[0]), trimmed=str(mlm[1]), lang=[f"en={tmp_path / 'en.txt'}"],
                              trust_remote_code=True))
    assert seen[-1][1] == {"batch_size": 8, "trust_remote_code": True, "show_progress": None}
    assert len(seen[-1][0][2]["en"]) == 40  # 1,000 lines by default


def test_an_existing_report_is_kept_unless_overwrite(mlm, tmp_path, capsys):
    report_path = tmp_path / "verify.json"
    report_path.write_text("mine")
    with pytest.raises(UserError, match="verify.json"):
        run_verify(settings(mlm, tmp_path, COVERED, report=str(report_path)))
    assert report_path.read_text() == "mine" and capsys.readouterr().out == ""
    run_verify(settings(mlm, tmp_path, COVERED, report=str(report_path), overwrite=True))
    assert json.loads(report_path.read_text())["en"]["passed"] is True


def test_a_difference_is_exit_1_with_the_languages_named_and_the_report_written(mlm, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    copied = broken_copy(mlm[1], tmp_path)
    weights = load_file(copied / "model.safetensors")
    weights["bert.embeddings.word_embeddings.weight"][5, 0] += 0.25  # "b"
    save_file(weights, copied / "model.safetensors", metadata={"format": "pt"})
    fr = tmp_path / "fr.txt"
    fr.write_text("abc\n", encoding="utf-8")  # not covered: nothing compared, nothing differs
    report_path = tmp_path / "verify.json"
    options = settings((mlm[0], copied), tmp_path, COVERED, report=str(report_path))
    options.lang += [f"fr={fr}", f"de={tmp_path / 'en.txt'}"]
    report = run_verify(options)
    out, err = capsys.readouterr()
    assert report["exit_status"] == 1 and list(report["languages"]) == ["en", "fr", "de"]
    assert report["failure"] == "verify: the trimmed model differs on covered text of en, de" and out == err == ""
    assert report["lines"][1].endswith("3 DIFFER") and "identical on every" not in "\n".join(report["lines"])
    assert json.loads(report_path.read_text())["fr"]["passed"] is True


@pytest.mark.parametrize("texts, min_coverage, shown", [
    (["abc", "c a", "ab"], 0.5, "en: 1 of 3 texts (33.3%)"),
    (["abc", "ab b"], 0.51, "en: 1 of 2 texts (50.0%)"),
    (["abc", "c"], 0.0001, "en: 0 of 2 texts (0.0%)"),
])
def test_too_little_covered_text_is_exit_1_naming_each_thin_language(mlm, tmp_path, capsys, texts, min_coverage,
                                                                       shown):
    report = run_verify(settings(mlm, tmp_path, texts, min_coverage=min_coverage))
    out, err = capsys.readouterr()
    assert report["exit_status"] == 1 and report["languages"]["en"]["passed"] is True
    assert report["failure"] == (f"verify: too little text is covered by the kept vocabulary to vouch for it ({shown}; "
                                 f"--min-coverage {min_coverage:g}): trim that language with more text, or verify on "
                                 "text it covers")
    assert out == err == "" and "verify: identical on every covered text" not in report["lines"]


def test_coverage_exactly_at_the_minimum_passes_and_a_language_without_text_does_not(mlm, tmp_path, capsys):
    assert run_verify(settings(mlm, tmp_path, ["abc", "ab b"], min_coverage=0.5))["exit_status"] == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    options = settings(mlm, tmp_path, COVERED, min_coverage=0.0)
    options.lang += [f"fr={empty}"]
    report = run_verify(options)
    assert report["exit_status"] == 1 and "(fr: 0 of 0 texts (0.0%); --min-coverage 0)" in report["failure"]
    options = settings(mlm, tmp_path, ["abc", "ab"], min_coverage=0.6)
    options.lang += [f"fr={empty}"]
    report = run_verify(options)
    assert report["exit_status"] == 1
    assert "(en: 1 of 2 texts (50.0%); fr: 0 of 0 texts (0.0%); --min-coverage 0.6)" in report["failure"]


def test_a_report_path_that_is_a_folder_is_refused_before_any_work_even_with_overwrite(mlm, tmp_path, capsys,
                                                                                        monkeypatch):
    folder = tmp_path / "verify.json"
    folder.mkdir()
    monkeypatch.setattr(verify, "verify_equivalence", lambda *_, **__: pytest.fail("compared before the check"))
    with pytest.raises(UserError, match=r"verify.json is a folder; --overwrite replaces a file of the same kind only"):
        run_verify(settings(mlm, tmp_path, COVERED, report=str(folder), overwrite=True))
    assert folder.is_dir() and not any(folder.iterdir())
