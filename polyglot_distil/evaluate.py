"""Zero-shot XNLI evaluation: accuracy, fidelity to a teacher, and efficiency, side by side.

    polyglot-distil eval xnli --model out/student --teacher out/teacher --langs fr,sw \
        --data ../shared/data/xnli --out out/eval-fr-sw
    polyglot-distil eval xnli --model out/student --langs fr,de --split test --out out/eval   # facebook/xnli
    polyglot-distil eval xnli ... --limit 300 --no-efficiency                                 # a quick look

Both models are folders (or hub names) with a 3-way sequence-classification head; their output
classes are mapped to XNLI's labels through `config.id2label` (generic LABEL_0..2 names are
taken to be in XNLI order, and the report says so).

Figures (`OUT/report.json`, tables in `OUT/REPORT.md`, PNG plots when matplotlib is installed):
- accuracy per language and its average over languages; a confusion matrix per language
  (rows: gold label, columns: predicted, in the order entailment, neutral, contradiction);
- with `--teacher`: label loyalty (share of pairs where both predict the same label) and
  probability loyalty (mean over pairs of 1 - sqrt(JS(p_model, p_teacher)); JS with natural
  logarithms, so 0 <= JS <= ln 2 and loyalty lies in [1 - sqrt(ln 2) = 0.167, 1]);
- efficiency of each model and the ratio model/teacher: parameters (total, embedding tables),
  weight files on disk, peak memory (CPU: resident-memory increase while loading the model and
  running one batch of 32 x 128 tokens), CPU latency (1 thread, batch 1, 128 tokens, median)
  and throughput (all threads, batch 32 x 128), and on a GPU the same latency, throughput and
  `torch.cuda.max_memory_allocated`. `--no-efficiency` skips the timed part.

Speed: pairs are tokenised once, sorted by length (longest first) and batched with padding to
the longest pair of each batch; predictions are put back in data order.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.loading import folder_size_bytes, load_model, load_tokenizer
from polyglot_distil.nli_data import LABELS, NLIData, label_id, xnli_split
from polyglot_distil.outputs import atomic_dir, check_writable

TIMING_TOKENS = 128
THROUGHPUT_BATCH = 32
ROLES = ("model", "teacher")


# ---------------------------------------------------------------------------------------------
# Loading an NLI classifier


@dataclass
class Classifier:
    """A loaded NLI model. `to_xnli[c]` is the XNLI label id (index into `LABELS`) of the
    model's output class c; `note` says when the label names had to be assumed."""

    path: str
    model: Any
    tokenizer: Any
    to_xnli: list[int]
    note: str | None = None


def _head_of(config) -> str:
    """What task head a config describes, in words ("a masked-LM head", "a 2-way ...")."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    kind = arch.split("For", 1)[1] if "For" in arch else ""
    n = getattr(config, "num_labels", None)
    return {
        "SequenceClassification": f"a {n}-way classification head",
        "TokenClassification": f"a {n}-way token-classification head",
        "MaskedLM": "a masked-LM head",
        "PreTraining": "pre-training heads (masked LM and next sentence)",
        "CausalLM": "a causal-LM head",
        "QuestionAnswering": "a question-answering head",
        "MultipleChoice": "a multiple-choice head",
        "": f"no task head ({arch or 'a bare encoder'})",
    }.get(kind, f"a {kind} head ({arch})")


def _label_order(path: str, config) -> tuple[list[int], str | None]:
    names = [str(config.id2label.get(c, f"LABEL_{c}")).strip().lower() for c in range(len(LABELS))]
    if names == [f"label_{c}" for c in range(len(LABELS))]:
        return list(range(len(LABELS))), (f"{path}: generic label names LABEL_0..2 in config.json; assumed XNLI "
                                          f"order ({', '.join(LABELS)})")
    ids = [label_id(name) for name in names]
    if None in ids or len(set(ids)) != len(LABELS):
        raise UserError(f"{path}: its labels {names} (config.json id2label) are not {', '.join(LABELS)}; "
                        "fix id2label to name the NLI label of each output")
    return ids, None


def load_classifier(path: str | os.PathLike, device: str = "cpu", attn_implementation: str = "sdpa",
                    trust_remote_code: bool = False) -> Classifier:
    """Load an NLI model and its tokenizer; one clear line if it has no 3-way classification head.

    Compare two models' outputs only with both loaded with the same `attn_implementation`
    (eager and sdpa differ by ~1e-7)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = str(path)
    config = load_model(path, AutoConfig, trust_remote_code=trust_remote_code)
    head = _head_of(config)
    if config.architectures and head != f"a {len(LABELS)}-way classification head":
        raise UserError(f"{path} has {head}, not a {len(LABELS)}-way sequence-classification head "
                        f"({', '.join(LABELS)}); fine-tune it on NLI first")
    if config.num_labels != len(LABELS):
        raise UserError(f"{path} has a {config.num_labels}-way classification head; XNLI needs 3 ({', '.join(LABELS)})")
    to_xnli, note = _label_order(path, config)
    model, info = load_model(path, AutoModelForSequenceClassification, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation, output_loading_info=True)
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise UserError(f"{path} has no saved classification head (weights missing: {missing}); "
                        "fine-tune it on NLI first")
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return Classifier(path, model.to(device).eval(), tokenizer, to_xnli, note)


# ---------------------------------------------------------------------------------------------
# Prediction


def predict_logits(model, tokenizer, premises: list[str], hypotheses: list[str], batch_size: int = 32,
                   max_length: int = 128, desc: str | None = None, progress: bool | None = None,
                   sort_by_length: bool = True) -> np.ndarray:
    """float32[N, C]: the model's logits for each (premise, hypothesis) pair, in data order and
    the model's own class order. Pairs are truncated to `max_length` tokens (longest first),
    sorted by length (unless `sort_by_length=False`) and padded per batch to its longest pair."""
    import torch
    from tqdm.auto import tqdm

    encoded = tokenizer(premises, hypotheses, truncation=True, max_length=max_length, padding=False)
    inputs = [k for k in tokenizer.model_input_names if k in encoded]
    pad_value = {k: 0 for k in inputs} | {"input_ids": tokenizer.pad_token_id or 0}
    lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(premises))
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    device = next(model.parameters()).device
    out = np.empty((len(premises), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit=" batches", file=sys.stderr, dynamic_ncols=True,
                      disable=None if progress is None else not progress):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        batch = {}
        for key in inputs:
            padded = np.full((len(rows), width), pad_value[key], dtype=np.int64)
            for i, row in enumerate(rows):
                values = encoded[key][row]
                padded[i, :len(values)] = values
            batch[key] = torch.from_numpy(padded).to(device)
        with torch.inference_mode():
            out[rows] = model(**batch).logits.float().cpu().numpy()
    return out


def xnli_probabilities(classifier: Classifier, logits: np.ndarray) -> np.ndarray:
    """float64[N, 3]: softmax of `logits` (float[N, 3], model class order) in `LABELS` order."""
    probs = softmax(logits)
    return probs[:, np.argsort(classifier.to_xnli)]


def predict_xnli(classifier: Classifier, data: NLIData, batch_size: int = 32, max_length: int = 128,
                 desc: str | None = None, progress: bool | None = None) -> np.ndarray:
    """float64[N, 3]: each pair's label probabilities in `LABELS` order, in data order."""
    logits = predict_logits(classifier.model, classifier.tokenizer, data.premises, data.hypotheses,
                            batch_size, max_length, desc, progress)
    return xnli_probabilities(classifier, logits)


# ---------------------------------------------------------------------------------------------
# Metrics: pure functions on numpy arrays


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64[N, C] probabilities from float[N, C] logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float64[N]: Jensen-Shannon divergence, natural log, in [0, ln 2], between the rows of two
    float[N, C] probability arrays (0 log 0 = 0)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl_to_m(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log(a) - np.log(m)), 0.0)
        return terms.sum(axis=1)

    return np.clip((kl_to_m(p) + kl_to_m(q)) / 2, 0.0, math.log(2))


def probability_loyalty(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over pairs of 1 - sqrt(JS(p, q)) (Xu et al. 2021); 1 means identical outputs."""
    return float(np.mean(1.0 - np.sqrt(js_divergence(p, q))))


def label_loyalty(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Share of pairs on which two int[N] label predictions agree."""
    return float(np.mean(np.asarray(predicted) == np.asarray(reference)))


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(gold)))


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, k: int = len(LABELS)) -> np.ndarray:
    """int64[k, k]: pairs with gold label i (row) predicted as j (column)."""
    return np.bincount(np.asarray(gold) * k + np.asarray(predicted), minlength=k * k).reshape(k, k)


# ---------------------------------------------------------------------------------------------
# Efficiency


def parameter_counts(model) -> dict:
    """Total parameters and those in embedding tables (word, position, token type), tied
    weights counted once."""
    import torch

    seen: set[int] = set()
    embedding = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            embedding += module.weight.numel()
    return {"params_total": sum(p.numel() for p in model.parameters()), "params_embedding": embedding}


def weights_disk_bytes(path: str) -> int | None:
    """Bytes of the weight files of a model folder (a hub name: its cached copy, if any)."""
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not cached, or not a hub name: nothing to measure
            return None
    weights = [p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".bin"))]
    return sum(p.stat().st_size for p in weights) if weights else folder_size_bytes(folder)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak increase of this process's resident memory inside a `with` block, sampled every
    `interval` seconds on a thread (Linux /proc; `delta` stays None elsewhere)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.delta = interval, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._start = _rss_bytes()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._start is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._start is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.delta = max(self._peak - self._start, 0)


def _release_memory() -> None:
    """Hand freed memory back to the OS so that the next RSS measurement starts clean."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timing_batch(classifier: Classifier, batch: int, tokens: int, device) -> dict:
    """A fixed pseudo-random input of `batch` x `tokens` ids (content does not change the cost)."""
    import torch

    vocab = classifier.model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, tokens), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in classifier.tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return {k: v.to(device) for k, v in inputs.items()}


def _seconds_per_call(model, inputs: dict, repeats: int, warmup: int, sync=None) -> float:
    """Median wall seconds of one forward pass."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(**inputs)
            if sync:
                sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_efficiency(path: str, repeats: int = 10, warmup: int = 2, attn_implementation: str = "sdpa",
                       trust_remote_code: bool = False) -> dict:
    """Memory and speed of one model, loaded afresh: peak memory (bytes), CPU latency (ms) and
    throughput (pairs/s), and on a GPU the same plus `gpu_peak_memory_bytes`."""
    import torch

    _release_memory()
    figures: dict = {}
    with PeakRSS() as peak:
        classifier = load_classifier(path, "cpu", attn_implementation, trust_remote_code)
        tokens = min(TIMING_TOKENS, classifier.model.config.max_position_embeddings)
        with torch.inference_mode():
            classifier.model(**_timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cpu"))
    figures["peak_memory_bytes"] = peak.delta
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _timing_batch(classifier, 1, tokens, "cpu")
        figures["cpu_latency_ms"] = 1000 * _seconds_per_call(classifier.model, one, repeats, warmup)
    finally:
        torch.set_num_threads(threads)
    full = _timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cpu")
    seconds = _seconds_per_call(classifier.model, full, repeats, warmup)
    figures["cpu_throughput_pairs_per_s"] = THROUGHPUT_BATCH / seconds
    figures["cpu_threads"] = threads
    figures["timing_tokens"] = tokens
    if torch.cuda.is_available():
        model = classifier.model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
        sync = torch.cuda.synchronize
        one = _timing_batch(classifier, 1, tokens, "cuda")
        figures["gpu_latency_ms"] = 1000 * _seconds_per_call(model, one, repeats, warmup, sync)
        full = _timing_batch(classifier, THROUGHPUT_BATCH, tokens, "cuda")
        figures["gpu_throughput_pairs_per_s"] = THROUGHPUT_BATCH / _seconds_per_call(model, full, repeats, warmup, sync)
        figures["gpu_peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        figures["gpu"] = torch.cuda.get_device_name()
    del classifier
    _release_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return figures


def _ratios(model: dict, teacher: dict) -> dict:
    """model / teacher for every numeric figure both have."""
    return {k: model[k] / teacher[k] for k in model
            if isinstance(model[k], (int, float)) and isinstance(teacher.get(k), (int, float)) and teacher[k]
            and k not in ("cpu_threads", "timing_tokens")}


# ---------------------------------------------------------------------------------------------
# The command


def parse_langs(spec: str) -> list[str]:
    langs = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not langs:
        raise UserError(f"--langs {spec!r}: expected comma-separated language codes, e.g. fr,sw")
    return langs


def evaluate_xnli(model: str, langs: list[str], out: str | os.PathLike, teacher: str | None = None,
                  split: str = "test", data_dir: str | None = None, batch_size: int = 32, max_length: int = 128,
                  limit: int | None = None, device: str = "auto", attn_implementation: str = "sdpa",
                  efficiency: bool = True, repeats: int = 10, overwrite: bool = False,
                  trust_remote_code: bool = False, progress: bool | None = None) -> dict:
    """Evaluate `model` (and `teacher`) on XNLI `split` for `langs`; write OUT/report.json,
    OUT/REPORT.md and plots; return the report as a dict."""
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
    paths = {"model": model} | ({"teacher": teacher} if teacher else {})
    classifiers = {role: load_classifier(path, device, attn_implementation, trust_remote_code)
                   for role, path in paths.items()}
    report: dict = {
        "format_version": 1, "task": "xnli", "split": split, "data": str(data_dir) if data_dir else "hf:facebook/xnli",
        "languages": langs, "labels": list(LABELS),
        "settings": {"batch_size": batch_size, "max_length": max_length, "limit": limit, "device": device,
                     "attn_implementation": attn_implementation, "js_log_base": "e"},
        "models": {role: {"path": c.path, "class_labels": [LABELS[i] for i in c.to_xnli]}
                   for role, c in classifiers.items()},
        "efficiency": {role: parameter_counts(c.model) | {"disk_bytes": weights_disk_bytes(c.path)}
                       for role, c in classifiers.items()},
        "results": {}, "notes": [c.note for c in classifiers.values() if c.note],
    }
    for lang, pairs in data.items():
        probs = {role: predict_xnli(c, pairs, batch_size, max_length, f"{lang} {role}", progress)
                 for role, c in classifiers.items()}
        predicted = {role: p.argmax(axis=1) for role, p in probs.items()}
        result = {"pairs": len(pairs),
                  "accuracy": {role: accuracy(p, pairs.labels) for role, p in predicted.items()},
                  "confusion": {role: confusion_matrix(pairs.labels, p).tolist() for role, p in predicted.items()}}
        if teacher:
            result["label_loyalty"] = label_loyalty(predicted["model"], predicted["teacher"])
            result["probability_loyalty"] = probability_loyalty(probs["model"], probs["teacher"])
        report["results"][lang] = result
    results = report["results"].values()
    report["average"] = {"accuracy": {role: float(np.mean([r["accuracy"][role] for r in results])) for role in paths}}
    if teacher:
        for key in ("label_loyalty", "probability_loyalty"):
            report["average"][key] = float(np.mean([r[key] for r in results]))
    del classifiers
    if efficiency:
        for role, path in paths.items():
            report["efficiency"][role] |= measure_efficiency(path, repeats, attn_implementation=attn_implementation,
                                                             trust_remote_code=trust_remote_code)
    report["efficiency"]["measured"] = efficiency
    if teacher:
        report["efficiency"]["ratio"] = _ratios(report["efficiency"]["model"], report["efficiency"]["teacher"])
    with atomic_dir(out, overwrite) as tmp:
        report["plots"] = write_plots(report, tmp)
        if report["plots"] is None:
            report["notes"].append("plots skipped: matplotlib is not installed (pip install 'polyglot-distil[plots]')")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "REPORT.md").write_text(render_markdown(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# Report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _size(n: float | None, unit: str = "B") -> str:
    """Decimal prefixes, as model cards give sizes: 714 MB, 178.6 M parameters."""
    if n is None:
        return "–"
    for prefix in ("", "K", "M", "G"):
        if abs(n) < 1000 or prefix == "G":
            break
        n /= 1000
    return f"{n:.0f} {unit}".strip() if prefix == "" else f"{n:.1f} {prefix}{unit}"


EFFICIENCY_ROWS = [
    ("params_total", "parameters", lambda v: _size(v, "")),
    ("params_embedding", "parameters in embedding tables", lambda v: _size(v, "")),
    ("disk_bytes", "weight files on disk", _size),
    ("peak_memory_bytes", "peak memory (CPU resident increase: load + one batch 32 x 128)", _size),
    ("cpu_latency_ms", "CPU latency, 1 thread, batch 1 x 128 tokens (ms, median)", lambda v: f"{v:.2f}"),
    ("cpu_throughput_pairs_per_s", "CPU throughput, all threads, batch 32 x 128 (pairs/s)", lambda v: f"{v:.1f}"),
    ("gpu_latency_ms", "GPU latency, batch 1 x 128 tokens (ms, median)", lambda v: f"{v:.2f}"),
    ("gpu_throughput_pairs_per_s", "GPU throughput, batch 32 x 128 (pairs/s)", lambda v: f"{v:.1f}"),
    ("gpu_peak_memory_bytes", "GPU peak memory allocated", _size),
]


def render_markdown(report: dict) -> str:
    roles = list(report["models"])
    has_teacher = "teacher" in roles
    lines = [f"# XNLI zero-shot evaluation ({report['split']})", ""]
    lines += [f"- {role}: `{m['path']}`" for role, m in report["models"].items()]
    lines += [f"- data: `{report['data']}`; device {report['settings']['device']}", "", "## Accuracy (%)", ""]
    header = "| language | pairs | " + " | ".join(roles) + (" | model - teacher |" if has_teacher else " |")
    lines += [header, "|" + " --- |" * (header.count("|") - 1)]
    rows = list(report["results"].items()) + [("average", {"pairs": "", **report["average"]})]
    for lang, r in rows:
        cells = [_pct(r["accuracy"][role]) for role in roles]
        if has_teacher:
            cells.append(f"{100 * (r['accuracy']['model'] - r['accuracy']['teacher']):+.2f}")
        lines.append(f"| {lang} | {r['pairs']} | " + " | ".join(cells) + " |")
    if has_teacher:
        lines += ["", "## Fidelity to the teacher", "", "| language | label loyalty (%) | probability loyalty |",
                  "| --- | --- | --- |"]
        lines += [f"| {lang} | {_pct(r['label_loyalty'])} | {r['probability_loyalty']:.4f} |" for lang, r in rows]
        lines += ["", "Probability loyalty: mean over pairs of 1 - sqrt(JS), the Jensen-Shannon divergence between "
                  "the two label distributions taken with natural logarithms (0 <= JS <= ln 2)."]
    lines += ["", "## Confusion matrices", "", "Rows: gold label; columns: predicted label."]
    for lang, r in report["results"].items():
        for role in roles:
            lines += ["", f"**{lang}, {role}**", "", "| gold \\ predicted | " + " | ".join(LABELS) + " |",
                      "| --- |" + " --- |" * len(LABELS)]
            lines += [f"| {LABELS[i]} | " + " | ".join(str(v) for v in row) + " |"
                      for i, row in enumerate(r["confusion"][role])]
    eff = report["efficiency"]
    header = "| figure | " + " | ".join(roles) + (" | model / teacher |" if has_teacher else " |")
    lines += ["", "## Efficiency", "", header, "|" + " --- |" * (header.count("|") - 1)]
    for key, label, fmt in EFFICIENCY_ROWS:
        if all(eff[role].get(key) is None for role in roles):
            continue
        cells = [fmt(eff[role][key]) if eff[role].get(key) is not None else "–" for role in roles]
        if has_teacher:
            ratio = eff["ratio"].get(key)
            cells.append("–" if ratio is None else f"{ratio:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"CPU throughput used {eff['model']['cpu_threads']} threads." if eff["measured"]
              else "Memory and speed not measured (--no-efficiency)."]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_plots(report: dict, folder: Path) -> list[str] | None:
    """`accuracy.png` (per-language accuracy of each model) and `params_vs_accuracy.png`; None
    when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    roles = list(report["models"])
    langs = list(report["results"]) + ["average"]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(langs) * len(roles)), 3.5))
    width = 0.8 / len(roles)
    for k, role in enumerate(roles):
        values = [100 * report["results"][lang]["accuracy"][role] for lang in langs[:-1]]
        values.append(100 * report["average"]["accuracy"][role])
        axes.bar(np.arange(len(langs)) + k * width, values, width, label=role)
    axes.set_xticks(np.arange(len(langs)) + width * (len(roles) - 1) / 2, langs)
    axes.set_ylabel("XNLI accuracy (%)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / "accuracy.png", dpi=120)
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(4.5, 3.5))
    for role in roles:
        params = report["efficiency"][role]["params_total"] / 1e6
        acc = 100 * report["average"]["accuracy"][role]
        axes.scatter([params], [acc], label=role)
        axes.annotate(role, (params, acc), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("parameters (millions)")
    axes.set_ylabel("average XNLI accuracy (%)")
    figure.tight_layout()
    figure.savefig(folder / "params_vs_accuracy.png", dpi=120)
    plt.close(figure)
    return ["accuracy.png", "params_vs_accuracy.png"]


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model (zero-shot XNLI: accuracy, loyalty, efficiency)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    x = tasks.add_parser("xnli", help="zero-shot XNLI per language, with a teacher side by side",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("--model", required=True, help="model folder or hub name (3-way NLI classification head)")
    x.add_argument("--teacher", help="the teacher to compare with (loyalty, efficiency ratios)")
    x.add_argument("--langs", required=True, help="comma-separated XNLI languages, e.g. fr,sw")
    x.add_argument("--split", default="test", help="test (default), dev/validation, or train")
    x.add_argument("--data", help="folder of {split}-{lang}.tsv files (default: facebook/xnli from the hub)")
    x.add_argument("--out", required=True, help="folder for report.json, REPORT.md and plots")
    x.add_argument("--batch-size", type=int, default=32)
    x.add_argument("--max-length", type=int, default=128, help="tokens per pair, truncated longest first")
    x.add_argument("--limit", type=int, help="evaluate only the first N pairs of each language")
    x.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    x.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    x.add_argument("--no-efficiency", action="store_true", help="skip the memory and speed measurements")
    x.add_argument("--repeats", type=int, default=10, help="timed forward passes per speed figure (median)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    x.add_argument("--trust-remote-code", action="store_true", help="allow the models' own code to run")
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(func=run_eval_xnli)


def run_eval_xnli(args) -> int:
    for name in ("batch_size", "max_length", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    report = evaluate_xnli(args.model, parse_langs(args.langs), args.out, teacher=args.teacher, split=args.split,
                           data_dir=args.data, batch_size=args.batch_size, max_length=args.max_length,
                           limit=args.limit, device=args.device, attn_implementation=args.attn_implementation,
                           efficiency=not args.no_efficiency, repeats=args.repeats, overwrite=args.overwrite,
                           trust_remote_code=args.trust_remote_code, progress=False if args.no_progress else None)
    average = report["average"]
    summary = ", ".join(f"{role} {100 * acc:.2f}%" for role, acc in average["accuracy"].items())
    print(f"average XNLI accuracy over {', '.join(report['languages'])}: {summary}; report in {args.out}/REPORT.md")
    return 0
