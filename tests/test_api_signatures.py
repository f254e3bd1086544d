"""The Python API's functions have real signatures: every option of a stage is a keyword argument
with the settings dataclass's name, type and default (no `**options`), so an editor completes
them; the two cannot drift apart."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from polyglot_distil import api
from polyglot_distil.errors import UserError

# api function -> (the settings dataclass, its fields the function takes as positionals or builds itself)
CONVERTED = {
    "count": ("polyglot_distil.vocab.count:CountSettings", {"model", "lang", "out"}),
    "trim": ("polyglot_distil.vocab.trim:TrimSettings", {"model", "counts", "langs", "out"}),
    "verify": ("polyglot_distil.vocab.verify:VerifySettings", {"original", "trimmed", "lang"}),
    "student": ("polyglot_distil.distill.student_stage:StudentSettings", {"teacher", "out"}),
    "general": ("polyglot_distil.distill.general:GeneralSettings", {"teacher", "lang", "out"}),
    "search_map": ("polyglot_distil.distill.layer_search:SearchMapSettings", {"teacher", "lang", "out"}),
    "finetune": ("polyglot_distil.distill.finetune:FinetuneSettings", {"model", "train", "dev", "out"}),
    "task": ("polyglot_distil.distill.task:TaskSettings", {"teacher", "student", "train", "dev", "out"}),
    "apply_diff": ("polyglot_distil.distill.diff:ApplyDiffSettings", {"student", "diff", "out"}),
    "quantize": ("polyglot_distil.distill.quantize:QuantizeSettings", {"model", "out"}),
    "export_onnx": ("polyglot_distil.cli.export_onnx:ExportOnnxSettings", {"model", "out"}),
    "xnli": ("polyglot_distil.eval.xnli:XNLISettings", {"model", "langs", "out"}),
    "import_model": ("polyglot_distil.cli.import_model:ImportModelSettings", {"source", "out"}),
}


def settings_class(path: str):
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def test_every_stage_function_of_the_api_is_checked():
    stages = {name for name, f in vars(api).items() if inspect.isfunction(f) and f.__module__ == api.__name__
              and not name.startswith("_")} - {"run", "sizes"}  # those two take a config, not options
    assert stages == set(CONVERTED)


@pytest.mark.parametrize("function", sorted(CONVERTED))
def test_api_keywords_are_the_settings_fields(function):
    settings, connecting = CONVERTED[function]
    fields = {f.name: f for f in dataclasses.fields(settings_class(settings))
              if f.name not in connecting and not f.metadata["option"].get("deprecated")}  # (--task: no keyword)
    parameters = inspect.signature(getattr(api, function)).parameters
    keywords = {name: p for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert not [p for p in parameters.values() if p.kind == p.VAR_KEYWORD], f"api.{function} takes **options"
    assert list(keywords) == list(fields), f"api.{function}'s keywords differ from {settings}'s fields"
    for name, field in fields.items():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        given = keywords[name].default
        assert (list(given) if isinstance(given, tuple) else given) == default, f"api.{function}({name}=...)"
        # the annotation is the field's, a list being any iterable of its items
        annotation = str(keywords[name].annotation).replace("Iterable[", "list[").replace("PathLike", "str")
        assert annotation == str(field.type), f"api.{function}({name}: ...)"


def test_an_unknown_keyword_is_a_type_error_and_a_bad_value_a_user_error(tmp_path):
    with pytest.raises(TypeError):
        api.count("tok", {"en": ["en.txt"]}, tmp_path / "c.parquet", max_line=3)  # a typo: Python says so
    with pytest.raises(UserError, match="--batch-lines must be at least 1"):
        api.count("tok", {"en": ["en.txt"]}, tmp_path / "c.parquet", batch_lines=0)


def test_a_stage_function_returns_its_report_and_prints_nothing_on_stdout(tmp_path, tiny_bert_dir, capsys):
    from conftest import CORPORA, run_cli

    report = api.count(str(tiny_bert_dir), {"en": [CORPORA / "en" / "sample.txt"]}, tmp_path / "c.parquet",
                       no_progress=True)
    assert capsys.readouterr().out == ""  # the command prints its table and "wrote ..."; the library returns
    wrote = f"({report['rows']:,} rows)"
    assert (tmp_path / "c.parquet").is_file() and report["lines"][-1] == f"wrote {tmp_path / 'c.parquet'} {wrote}"
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={CORPORA / 'en' / 'sample.txt'}", "--out",
                   tmp_path / "c2.parquet", "--no-progress") == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(report["lines"]) and printed[-1] == f"wrote {tmp_path / 'c2.parquet'} {wrote}"
    def untimed(lines):  # the table's cells but its last column, tokens/s (a timing, which also sets the width)
        return [line.split()[:-1] for line in lines[:-1]]

    assert untimed(printed) == untimed(report["lines"])


@pytest.mark.slow
def test_every_stage_returns_its_lines_prints_nothing_and_its_command_prints_them(tmp_path, tiny_bert_dir, capsys):
    """Each stage through the API on a tiny model: stdout stays empty (no redirect in api) and the
    report holds the lines; the commands print those lines (student, apply-diff: no timings in them)."""
    from conftest import CORPORA, run_cli

    nli = {"train": [str(CORPORA / "nli" / "train-en.tsv")], "dev": [str(CORPORA / "nli" / "dev-en.tsv")]}
    langs = {"en": [CORPORA / "en" / "sample.txt"], "fr": [CORPORA / "fr" / "sample.txt"]}
    phase1 = {"steps": 2, "batch_size": 2, "block_size": 24, "heldout_blocks": 2, "max_lines": 30, "no_progress": True}
    short = {"batch_size": 8, "max_train_pairs": 16, "no_progress": True}
    t = tmp_path

    def xnli(out):
        return api.xnli(t / "task" / "best", ["fr"], out, teacher=str(t / "teacher" / "best"), data=str(CORPORA / "nli"),
                        max_pairs=20, no_efficiency=True, bootstrap=0, teacher_cache=str(t / "cache"), no_progress=True)

    calls = {
        "count": lambda: api.count(str(tiny_bert_dir), langs, t / "c.parquet", no_progress=True),
        "trim": lambda: api.trim(str(tiny_bert_dir), t / "c.parquet", ["en", "fr"], t / "trimmed", min_count=1,
                                 verify_lines=10, no_progress=True),
        "verify": lambda: api.verify(str(tiny_bert_dir), t / "trimmed", langs, max_lines=10, no_progress=True),
        "student": lambda: api.student(str(t / "trimmed"), t / "student", layers=1),
        "search_map": lambda: api.search_map(str(t / "trimmed"), langs, t / "search", student=str(t / "student"),
                                             candidates="0;3", **phase1),
        "general": lambda: api.general(str(t / "trimmed"), langs, t / "general", student=str(t / "student"), **phase1),
        "finetune": lambda: api.finetune(str(t / "trimmed"), **nli, out=t / "teacher", epochs=0.5, **short),
        "task": lambda: api.task(t / "teacher" / "best", t / "general" / "final", **nli, out=t / "task",
                                 full_epochs=0.5, sparse_epochs=0.5, **short),
        "apply_diff": lambda: api.apply_diff(t / "general" / "final", t / "task" / "sparse_diff", t / "dense"),
        "quantize": lambda: api.quantize(t / "task" / "best", t / "int8"),
        "qat": lambda: api.quantize(t / "task" / "best", t / "qat", method="qat", teacher=str(t / "teacher" / "best"),
                                    **nli, epochs=0.5, **short),
        "xnli": lambda: xnli(t / "eval"),
        "xnli_cached": lambda: xnli(t / "eval2"),  # the teacher's predictions from the cache
    }
    reports, progress = {}, {}
    for name, call in calls.items():
        reports[name] = call()
        out, progress[name] = capsys.readouterr()
        assert out == "" and reports[name]["lines"], (name, out)
    # what comes while a stage works is progress, on stderr as it happens
    assert progress["search_map"].startswith("search: 2 given mappings, 2 steps each")
    assert f"fr teacher: predictions from {t / 'cache'}" in progress["xnli_cached"]
    assert reports["count"]["lines"][-1].startswith(f"wrote {t / 'c.parquet'}")
    assert reports["verify"]["lines"][-1] == "verify: identical on every covered text"
    assert reports["search_map"]["lines"][-1].startswith(f"wrote {t / 'search' / 'layer_map.txt'}")
    accuracy = {role: f"{100 * a:.2f}%" for role, a in reports["xnli"]["average"]["accuracy"].items()}
    assert reports["xnli"]["lines"] == [f"average XNLI accuracy over fr: model {accuracy['model']}, teacher "
                                        f"{accuracy['teacher']}; report in {t / 'eval'}/REPORT.md"]

    assert run_cli("student", "--teacher", t / "trimmed", "--layers", 1, "--out", t / "student",
                   "--overwrite") == 0  # the same lines as the API's
    assert run_cli("apply-diff", "--student", t / "general" / "final", "--diff", t / "task" / "sparse_diff",
                   "--out", t / "dense", "--overwrite") == 0
    assert capsys.readouterr().out.splitlines() == [*reports["student"]["lines"], *reports["apply_diff"]["lines"]]
