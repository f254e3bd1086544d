"""Renamed options keep working for one release with one warning line (command line and config),
`--task` is accepted but deprecated and hidden, tuning-only options sit in an "advanced" group, and
docs/renamed-options.md lists exactly the renames the declarations hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polyglot_distil.cli import command_modules, main, parse_args

DOC = Path(__file__).resolve().parents[1] / "docs" / "renamed-options.md"
WARNING = "warning: {old} is renamed {new}; the old name goes in the next release (docs/renamed-options.md)\n"


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each warning prints once per process: each test starts with none printed."""
    from polyglot_distil import options

    options._WARNED.clear()


def commands():
    return {module.COMMAND.name: module.COMMAND for module in command_modules()}


@pytest.mark.parametrize("argv,field,value,old,new", [
    (["eval", "xnli", "--model", "m", "--langs", "fr", "--out", "o", "--limit", "30"], "max_pairs", 30,
     "--limit", "--max-pairs"),
    (["trim", "--model", "m", "--counts", "c", "--langs", "en", "--out", "o", "--verify-lang", "en=a.txt"],
     "verify_text", ["en=a.txt"], "--verify-lang", "--verify-text"),
    (["export", "onnx", "--model", "m", "--out", "o", "--text", "a.txt"], "check_text", ["a.txt"], "--text",
     "--check-text"),
    (["finetune", "--model", "m", "--train", "t", "--dev", "d", "--out", "o", "--max-train-examples", "64"],
     "max_train_pairs", 64, "--max-train-examples", "--max-train-pairs"),
    (["sizes", "c.yaml", "--layers", "2,4"], "layer_counts", "2,4", "--layers", "--layer-counts"),
    (["smoke-model", "--texts", "a.txt", "b.txt", "--out", "o"], "tokenizer_text", ["a.txt", "b.txt"], "--texts",
     "--tokenizer-text"),
])
def test_an_old_option_name_still_works_and_says_so_in_one_line(capsys, argv, field, value, old, new):
    _, settings = parse_args(argv)
    assert getattr(settings, field) == value
    assert capsys.readouterr().err == WARNING.format(old=old, new=new)


def test_the_new_name_prints_nothing_and_old_and_new_repeated_options_add_up(capsys):
    _, settings = parse_args(["trim", "--model", "m", "--counts", "c", "--langs", "en", "--out", "o",
                              "--verify-text", "en=a.txt", "--verify-lang", "fr=b.txt"])
    assert settings.verify_text == ["en=a.txt", "fr=b.txt"]
    parse_args(["eval", "xnli", "--model", "m", "--langs", "fr", "--out", "o", "--max-pairs", "30"])
    assert capsys.readouterr().err == WARNING.format(old="--verify-lang", new="--verify-text")


def test_an_old_config_key_still_works_and_says_so_in_one_line_once(capsys):
    for _ in range(3):  # `run` reads a section while validating, planning and running
        values = commands()["eval xnli"].from_config("eval", {"limit": 5}, set())
        assert values == {"max_pairs": 5}
    assert capsys.readouterr().err == WARNING.format(old="eval.limit", new="max_pairs")


def test_an_old_name_is_not_in_help(capsys):
    with pytest.raises(SystemExit):
        parse_args(["eval", "xnli", "--help"])
    out = capsys.readouterr().out
    assert "--max-pairs" in out and "--limit" not in out


@pytest.mark.parametrize("words", [["finetune"], ["distil", "task"], ["quantize"]])
def test_task_is_accepted_with_a_deprecation_line_and_hidden_from_help(capsys, words):
    with pytest.raises(SystemExit):
        parse_args([*words, "--help"])
    assert "--task" not in capsys.readouterr().out
    required = {"finetune": ["--model", "m", "--train", "t", "--dev", "d"],
                "distil task": ["--teacher", "t", "--student", "s", "--train", "t", "--dev", "d"],
                "quantize": ["--model", "m"]}[" ".join(words)]
    _, settings = parse_args([*words, *required, "--out", "o", "--task", "nli"])
    assert settings.task == "nli"
    assert capsys.readouterr().err == ("warning: --task is deprecated: NLI is the only task; drop --task (it goes in "
                                       "the next release)\n")


def test_a_deprecated_option_is_left_out_of_the_printed_command_line_but_not_of_the_hash():
    command = commands()["finetune"]
    values = {"model": "m", "task": "nli", "train": ["t"], "dev": ["d"], "out": "o"}
    assert "--task" not in command.argv(values)
    assert command.argv(values, first_names=True)[2:4] == ["--task", "nli"]  # as markers made before hashed it


def test_tuning_only_options_are_in_the_advanced_group(capsys):
    with pytest.raises(SystemExit):
        parse_args(["count", "--help"])
    out = capsys.readouterr().out
    advanced = out[out.index("advanced (tuning only"):]
    assert "--batch-lines" in advanced and "--max-lines" not in advanced


def test_the_renamed_options_page_lists_every_rename_the_declarations_hold():
    declared = {(name, old, option.flags[-1]) for name, command in commands().items() for option in command.options
                for old in option.renamed_from}
    listed = set()
    for row in re.findall(r"^\| (`[^|]+`) \| `(--[a-z-]+)` \([^)]*\) \| `(--[a-z-]+)` \(", DOC.read_text(), re.M):
        for name in re.findall(r"`([^`]+)`", row[0]):
            listed.add((name, row[1], row[2]))
    assert listed == declared


def test_an_unknown_renamed_config_key_is_still_one_line(capsys):
    from polyglot_distil.errors import UserError

    with pytest.raises(UserError, match=r"config key eval.limits: unknown option"):
        commands()["eval xnli"].from_config("eval", {"limits": 5}, set())


def test_main_prints_the_warning_once_and_the_command_still_fails_cleanly_on_a_missing_file(capsys, tmp_path):
    code = main(["trim", "--model", str(tmp_path / "none"), "--counts", str(tmp_path / "none.parquet"),
                 "--langs", "en", "--out", str(tmp_path / "out"), "--verify-lang", "en=x.txt"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("warning: --verify-lang is renamed --verify-text") == 1
    assert err.splitlines()[-1].startswith("error: ")


API_FUNCTION = {"count": "count", "trim": "trim", "export onnx": "export_onnx", "eval xnli": "xnli",
                "apply-diff": "apply_diff", "finetune": "finetune", "distil task": "task", "quantize": "quantize",
                "sizes": "sizes"}
NO_API_FUNCTION = {"smoke-model"}  # a test and demo helper: `models.smoke.build_smoke_model` is its library call


def test_the_api_accepts_exactly_the_renamed_keywords_the_declarations_hold():
    from polyglot_distil import api

    declared = {(API_FUNCTION[name], old, option.yaml_key)
                for name, command in commands().items() if name not in NO_API_FUNCTION
                for option in command.options for old in option.old_yaml_keys}
    table = {(function, old, new) for function, renamed in api.OLD_KEYWORDS.items() for old, new in renamed.items()}
    assert table == declared
    deprecated = {(API_FUNCTION[name], option.yaml_key) for name, command in commands().items()
                  for option in command.options if option.deprecated}
    assert {(function, keyword) for function, keyword in api.DEPRECATED_KEYWORDS.items()} == deprecated


def test_an_old_api_keyword_still_works_with_one_warning_and_old_and_new_together_are_refused(capsys, tmp_path):
    from polyglot_distil import api
    from polyglot_distil.errors import UserError

    # the old keyword reaches the stage as the new one (not a TypeError): the stage's own one-line error
    with pytest.raises(UserError, match="cannot load dataset"):
        api.xnli(tmp_path / "none", ["fr"], tmp_path / "out", limit=5)
    err = capsys.readouterr().err
    assert err.count("warning: api.xnli(limit=...) is renamed max_pairs=") == 1
    with pytest.raises(TypeError, match="both limit= and its new name max_pairs="):
        api.xnli(tmp_path / "none", ["fr"], tmp_path / "out", limit=5, max_pairs=5)
    with pytest.raises(TypeError):  # a misspelt keyword is still a TypeError
        api.xnli(tmp_path / "none", ["fr"], tmp_path / "out", limits=5)
    with pytest.raises(UserError, match="task= offers one choice"):
        api.finetune(tmp_path / "none", ["t"], ["d"], tmp_path / "out", task="ner")


@pytest.mark.parametrize("command,rest,old,new", [
    ("sizes", ["c.yaml", "2,4", "--hidden-sizes", "64"], "--layers", "--layer-counts"),
    ("smoke-model", ["a.txt", "b.txt", "--out", "o"], "--texts", "--tokenizer-text"),
])
def test_sizes_and_smoke_model_get_the_same_settings_under_their_old_names(capsys, command, rest, old, new):
    """Neither is a `run` stage, so no stage marker holds these options: equal settings are all it
    takes for a command run under the old name to do exactly what it did (`sizes` hands each size
    to the `student` stage as its `--layers`, unchanged)."""
    def argv(flag):  # the flag before its values (after `sizes`' config)
        return [command, *rest[:1], flag, *rest[1:]] if command == "sizes" else [command, flag, *rest]

    assert parse_args(argv(old)) == parse_args(argv(new))
    with pytest.raises(SystemExit):
        parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert new in out and old not in out


def test_api_sizes_takes_its_old_keyword_with_one_warning(capsys, tmp_path):
    from polyglot_distil import api
    from polyglot_distil.errors import UserError

    with pytest.raises(UserError, match="not found|no such|does not exist"):
        api.sizes(tmp_path / "none.yaml", layers=[1, 2])
    assert capsys.readouterr().err.count("warning: api.sizes(layers=...) is renamed layer_counts=") == 1
