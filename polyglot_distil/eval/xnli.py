"""Zero-shot XNLI evaluation: accuracy, fidelity to a teacher, and efficiency, side by side.

    polyglot-distil eval xnli --model out/student --teacher out/teacher --langs fr,sw \
        --data ../shared/data/xnli --out out/eval-fr-sw
    polyglot-distil eval xnli --model out/student --langs fr,de --split test --out out/eval   # facebook/xnli
    polyglot-distil eval xnli ... --max-pairs 300 --no-efficiency                               # a quick look

    polyglot-distil eval xnli --model out/student-int8 --baseline out/task/best --teacher out/teacher \
        --langs fr --out out/eval-int8                            # a deployed form beside its float model

The models are folders (or hub names) with a 3-way sequence-classification head; their output
classes are mapped to XNLI's labels through `config.id2label` (generic LABEL_0..2 names are
taken to be in XNLI order, and the report says so). Deployed forms are evaluated like any model,
on the CPU: an int8 folder (`quantize`), an ONNX folder (`export onnx`: its model.onnx) or an
.onnx file in one (model_int8.onnx). `--baseline` puts the float model a deployed form was made
from beside it: its accuracy and loyalty, the share of pairs where both predict the same label
(`agreement_with_baseline`), and the ratios of size and speed.

Figures (`OUT/report.json`, tables in `OUT/REPORT.md`, PNG plots when matplotlib is installed;
each pair's predicted label in `OUT/predictions.npz`, arrays `{lang}/{role}` and `{lang}/gold`):
- accuracy per language and its average over languages, each with a 95% bootstrap interval
  (`--bootstrap N` resamples of the pairs, `--seed`); a confusion matrix per language (rows: gold
  label, columns: predicted, in the order entailment, neutral, contradiction);
- the model against the teacher and the baseline on the same pairs: the accuracy difference,
  its paired bootstrap interval and the exact McNemar test's p-value (eval/stats.py);
- with `--teacher`: label loyalty (share of pairs where both predict the same label) and
  probability loyalty (mean over pairs of 1 - sqrt(JS(p_model, p_teacher)); JS with natural
  logarithms, so 0 <= JS <= ln 2 and loyalty lies in [1 - sqrt(ln 2) = 0.167, 1]);
- efficiency of each model and the ratio model/teacher: parameters (total, embedding tables),
  weight files on disk, peak memory (CPU: resident-memory increase while loading the model and
  running one batch of 32 x 128 tokens), CPU latency (1 thread, batch 1, 128 tokens, median)
  and throughput (all threads, batch 32 x 128), and on a GPU the same latency, throughput and
  `torch.cuda.max_memory_allocated`. `--no-efficiency` skips the timed part.

Speed: pairs are tokenised once, sorted by length (longest first) and batched with padding to
the longest pair of each batch; predictions are put back in data order. `--teacher-cache DIR`
keeps the teacher's predictions (keyed by its files' names, sizes and times, the pairs and the
settings) so that students evaluated against one teacher run it once; its speed is still
measured in every evaluation, beside the model's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import prediction_key
from polyglot_distil.eval.efficiency import _parameter_figures, _ratios, measure_efficiency, weights_disk_bytes
from polyglot_distil.eval.metrics import accuracy, confusion_matrix, label_loyalty, probability_loyalty
from polyglot_distil.eval.predict import CACHE_FORMAT, cached_xnli, predict_xnli
from polyglot_distil.eval.report import render_markdown, write_plots
from polyglot_distil.eval.stats import compare_paired, mcnemar_exact, percentile_interval, resampled_accuracies
from polyglot_distil.models.classifier import load_classifier
from polyglot_distil.options import FLAG, NO_PROGRESS, OVERWRITE, READS, TRUST_REMOTE_CODE, WRITES, csv, \
    like, setting
from polyglot_distil.data.nli import LABELS, xnli_split
from polyglot_distil.outputs import atomic_dir, check_writable

ROLES = ("model", "teacher")


def parse_langs(spec: str) -> list[str]:
    langs = list(dict.fromkeys(csv(spec)))
    if not langs:
        raise UserError(f"--langs {spec!r}: expected comma-separated language codes, e.g. fr,sw")
    return langs


def evaluate_xnli(model: str, langs: list[str], out: str | os.PathLike, teacher: str | None = None,
                  baseline: str | None = None, split: str = "test", data_dir: str | None = None, batch_size: int = 32, max_length: int = 128,
                  limit: int | None = None, device: str = "auto", attn_implementation: str = "sdpa",
                  efficiency: bool = True, repeats: int = 10, overwrite: bool = False,
                  trust_remote_code: bool = False, progress: bool | None = None,
                  teacher_cache: str | None = None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Evaluate `model` (and `baseline`, the float model it was quantized or exported from, and
    `teacher`) on XNLI `split` for `langs`; write OUT/report.json, OUT/REPORT.md and plots;
    return the report as a dict. `teacher_cache`: a folder where the teacher's predictions are
    kept and reused. `bootstrap`: resamples for the 95% intervals and the paired comparisons
    (0: none), drawn with `seed`."""
    import torch

    check_writable(out, overwrite)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    # Every language's data before any model work: a missing language fails in seconds.
    data = {}
    for lang in langs:
        pairs = xnli_split(data_dir, split, lang)
        data[lang] = pairs.select(range(min(limit, len(pairs)))) if limit else pairs
    paths = {"model": model} | ({"baseline": baseline} if baseline else {}) | ({"teacher": teacher} if teacher else {})
    classifiers = {role: load_classifier(path, device, attn_implementation, trust_remote_code)
                   for role, path in paths.items()}
    report: dict = {
        "format_version": 1, "task": "xnli", "split": split, "data": str(data_dir) if data_dir else "hf:facebook/xnli",
        "languages": langs, "labels": list(LABELS),
        "settings": {"batch_size": batch_size, "max_length": max_length, "limit": limit, "device": device,
                     "attn_implementation": attn_implementation, "js_log_base": "e",
                     "bootstrap": bootstrap, "seed": seed,
                     **({"teacher_cache": str(teacher_cache)} if teacher and teacher_cache else {})},
        "models": {role: {"path": c.path, "class_labels": [LABELS[i] for i in c.to_xnli]}
                   for role, c in classifiers.items()},
        "efficiency": {role: _parameter_figures(c.model) | {"disk_bytes": weights_disk_bytes(c.path)}
                       for role, c in classifiers.items()},
        "results": {}, "notes": [c.note for c in classifiers.values() if c.note],
    }
    smoke = [role for role, c in classifiers.items() if getattr(c.model.config, "smoke_model", False)]
    if smoke:
        report["notes"].insert(0, f"SMOKE RUN: the {' and the '.join(smoke)} descend from a smoke model (random "
                                  "weights, tiny data); these figures only show that the stages connect")
    settings = {"batch_size": batch_size, "max_length": max_length, "device": device,
                "attn_implementation": attn_implementation}

    def predict(role: str, classifier, lang: str, pairs) -> np.ndarray:
        def compute():
            return predict_xnli(classifier, pairs, batch_size, max_length, f"{lang} {role}", progress)

        if role != "teacher" or not teacher_cache or not os.path.exists(paths["teacher"]):  # a hub name may change
            return compute()
        key = prediction_key(CACHE_FORMAT, paths["teacher"], pairs.premises, pairs.hypotheses, pairs.labels,
                             {**settings, "split": split, "lang": lang})
        probs, cached = cached_xnli(teacher_cache, f"{split}-{lang}", key, compute)
        if cached:
            print(f"{lang} teacher: predictions from {teacher_cache}", file=sys.stderr, flush=True)
        return probs

    correct: dict[str, dict[str, np.ndarray]] = {}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for lang, pairs in data.items():
        probs = {role: predict(role, c, lang, pairs) for role, c in classifiers.items()}
        predicted = {role: p.argmax(axis=1) for role, p in probs.items()}
        result = {"pairs": len(pairs),
                  "accuracy": {role: accuracy(p, pairs.labels) for role, p in predicted.items()},
                  "confusion": {role: confusion_matrix(pairs.labels, p).tolist() for role, p in predicted.items()}}
        if teacher:
            result["label_loyalty"] = label_loyalty(predicted["model"], predicted["teacher"])
            result["probability_loyalty"] = probability_loyalty(probs["model"], probs["teacher"])
            if baseline:
                result["baseline_label_loyalty"] = label_loyalty(predicted["baseline"], predicted["teacher"])
                result["baseline_probability_loyalty"] = probability_loyalty(probs["baseline"], probs["teacher"])
        if baseline:  # how often the deployed form decides as the float model does
            result["agreement_with_baseline"] = label_loyalty(predicted["model"], predicted["baseline"])
        correct[lang] = {role: p == np.asarray(pairs.labels) for role, p in predicted.items()}
        predictions[lang] = predicted
        report["results"][lang] = result
    results = report["results"].values()
    report["average"] = {"accuracy": {role: float(np.mean([r["accuracy"][role] for r in results])) for role in paths}}
    if bootstrap:
        add_error_bars(report, correct, bootstrap, seed)
    for key in ("label_loyalty", "probability_loyalty", "baseline_label_loyalty", "baseline_probability_loyalty",
                "agreement_with_baseline"):
        if all(key in r for r in results):
            report["average"][key] = float(np.mean([r[key] for r in results]))
    del classifiers
    if efficiency:
        for role, path in paths.items():
            report["efficiency"][role] |= measure_efficiency(path, repeats, attn_implementation=attn_implementation,
                                                             trust_remote_code=trust_remote_code)
    report["efficiency"]["measured"] = efficiency
    if teacher:
        report["efficiency"]["ratio"] = _ratios(report["efficiency"]["model"], report["efficiency"]["teacher"])
    if baseline:
        report["efficiency"]["ratio_to_baseline"] = _ratios(report["efficiency"]["model"],
                                                            report["efficiency"]["baseline"])
    with atomic_dir(out, overwrite) as tmp:
        report["plots"] = write_plots(report, tmp)
        if report["plots"] is None:
            report["notes"].append("plots skipped: matplotlib is not installed (pip install 'polyglot-distil[plots]')")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        # each pair's predicted XNLI label, so that two evaluations on the same pairs can be compared pair by pair
        np.savez(tmp / "predictions.npz", **{f"{lang}/gold": np.asarray(data[lang].labels, dtype=np.int8)
                                             for lang in langs},
                 **{f"{lang}/{role}": p.astype(np.int8) for lang, by_role in predictions.items()
                    for role, p in by_role.items()})
        (tmp / "REPORT.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def add_error_bars(report: dict, correct: dict[str, dict[str, np.ndarray]], resamples: int, seed: int) -> None:
    """Into `report`: each accuracy's 95% bootstrap interval ("interval"), and the model against
    the teacher and the baseline on the same pairs ("paired": difference, its paired bootstrap
    interval, exact McNemar p-value), per language and for the average over languages (each
    language resampled on its own; McNemar over all pairs together). `correct[lang][role]` is
    bool[N]: the role's prediction equals the gold label."""
    rivals = [role for role in ("teacher", "baseline") if role in next(iter(correct.values()))]
    resampled = {}
    for lang, by_role in correct.items():
        resampled[lang] = {role: resampled_accuracies(c, resamples, seed) for role, c in by_role.items()}
        result = report["results"][lang]
        result["interval"] = {role: percentile_interval(r) for role, r in resampled[lang].items()}
        result["paired"] = {rival: compare_paired(by_role["model"], by_role[rival], resamples, seed) for rival in rivals}
    average = report["average"]
    roles = list(next(iter(correct.values())))
    mean_resampled = {role: np.mean([resampled[lang][role] for lang in correct], axis=0) for role in roles}
    average["interval"] = {role: percentile_interval(r) for role, r in mean_resampled.items()}
    average["paired"] = {}
    for rival in rivals:
        difference = mean_resampled["model"] - mean_resampled[rival]
        average["paired"][rival] = {"difference": average["accuracy"]["model"] - average["accuracy"][rival],
                                    "interval": percentile_interval(difference),
                                    **mcnemar_exact(np.concatenate([c["model"] for c in correct.values()]),
                                                    np.concatenate([c[rival] for c in correct.values()]))}


@dataclass(kw_only=True)
class XNLISettings:
    """`eval xnli`'s settings (the command line's options, a `run` config's `eval:` section)."""

    model: str = setting(role=READS, help="model folder or hub name (3-way NLI classification head)")
    teacher: str | None = setting(None, role=READS, help="the teacher to compare with (loyalty, efficiency ratios)")
    baseline: str | None = setting(None, role=READS, help="the float model --model was quantized or exported from, "
                                                         "side by side (agreement, size and speed ratios)")
    langs: str = setting(help="comma-separated XNLI languages, e.g. fr,sw")
    split: str = setting("test", help="test (default), dev/validation, or train")
    data: str | None = setting(None, role=READS,
                               help="folder of {split}-{lang}.tsv files (default: facebook/xnli from the hub)")
    out: str = setting(role=WRITES, help="folder for report.json, REPORT.md and plots")
    batch_size: int = setting(32)
    max_length: int = setting(128, help="tokens per pair, truncated longest first")
    max_pairs: int | None = setting(None, help="evaluate only the first N pairs of each language",
                                    renamed_from=("--limit",))
    device: str = setting("auto", advanced=True, help="auto (GPU when present), cpu, cuda or cuda:N")
    attn_implementation: str = setting("sdpa", advanced=True, choices=("sdpa", "eager"))
    bootstrap: int = setting(1000, metavar="N",
                             help="bootstrap resamples for each accuracy's 95%% interval and the paired comparisons "
                                  "with the teacher and baseline (exact McNemar test beside them); 0: none")
    seed: int = setting(0, help="seed of the bootstrap draws")
    no_efficiency: bool = setting(False, kind=FLAG, help="skip the memory and speed measurements")
    repeats: int = setting(10, advanced=True, help="timed forward passes per speed figure (median)")
    teacher_cache: str | None = setting(None, advanced=True, metavar="DIR",
                                        help="keep the teacher's predictions in DIR and reuse them (keyed by its "
                                             "files, the pairs and the settings): several students evaluated "
                                             "against one teacher run it once")
    overwrite: bool = like(OVERWRITE, help="replace an existing output folder")
    trust_remote_code: bool = like(TRUST_REMOTE_CODE, help="allow the models' own code to run")
    no_progress: bool = like(NO_PROGRESS)

    def __post_init__(self):
        for name in ("batch_size", "max_length", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.bootstrap < 0:
            raise UserError(f"--bootstrap {self.bootstrap}: give a number of resamples (1000 is usual), or 0 for none")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise UserError("--max-pairs must be at least 1")
        if self.teacher_cache and not self.teacher:
            raise UserError("--teacher-cache keeps the teacher's predictions: give --teacher too")


def run_eval_xnli(settings: XNLISettings) -> dict:
    """The `eval xnli` stage: evaluate, write the report; returns it, the averages in "lines"."""
    if settings.teacher_cache and os.path.exists(settings.teacher_cache) and not os.path.isdir(settings.teacher_cache):
        raise UserError(f"--teacher-cache {settings.teacher_cache}: not a folder; give a folder (made if missing)")
    report = evaluate_xnli(settings.model, parse_langs(settings.langs), settings.out, teacher=settings.teacher,
                           baseline=settings.baseline, split=settings.split,
                           data_dir=settings.data, batch_size=settings.batch_size, max_length=settings.max_length,
                           limit=settings.max_pairs, device=settings.device, attn_implementation=settings.attn_implementation,
                           efficiency=not settings.no_efficiency, repeats=settings.repeats, overwrite=settings.overwrite,
                           trust_remote_code=settings.trust_remote_code, progress=False if settings.no_progress else None,
                           teacher_cache=settings.teacher_cache, bootstrap=settings.bootstrap, seed=settings.seed)
    average = report["average"]
    summary = ", ".join(f"{role} {100 * acc:.2f}%" for role, acc in average["accuracy"].items())
    return {**report, "lines": [f"average XNLI accuracy over {', '.join(report['languages'])}: {summary}; report in "
                                f"{settings.out}/REPORT.md"]}
