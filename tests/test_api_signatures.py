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
    from conftest import CORPORA

    report = api.count(str(tiny_bert_dir), {"en": [CORPORA / "en" / "sample.txt"]}, tmp_path / "c.parquet",
                       no_progress=True)
    assert capsys.readouterr().out == ""  # the command prints its table and "wrote ..."; the library returns
    assert (tmp_path / "c.parquet").is_file() and report
