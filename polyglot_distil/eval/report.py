"""The evaluation report: REPORT.md (accuracy, fidelity, confusion matrices, efficiency) and PNG
plots (when matplotlib is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyglot_distil.data.nli import LABELS


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _with_interval(value: float, interval: list[float] | None, signed: bool = False) -> str:
    """A percentage, with its 95% interval when the report has one: `58.84 [56.91, 60.76]`."""
    text = f"{100 * value:+.2f}" if signed else _pct(value)
    return text if interval is None else f"{text} [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def _paired(comparison: dict | None, difference: float) -> str:
    """The model's difference from a rival, with its paired interval and McNemar p-value."""
    if comparison is None:
        return f"{100 * difference:+.2f}"
    return f"{_with_interval(difference, comparison['interval'], signed=True)}, p = {comparison['p_value']:.3g}"


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
    lines += [f"**{note}**\n" for note in report["notes"] if note.startswith("SMOKE RUN")]
    lines += [f"- {role}: `{m['path']}`" for role, m in report["models"].items()]
    lines += [f"- data: `{report['data']}`; device {report['settings']['device']}", "", "## Accuracy (%)", ""]
    rivals = [role for role in ("teacher", "baseline") if role in roles]
    header = "| language | pairs | " + " | ".join(roles + [f"model - {rival}" for rival in rivals]) + " |"
    lines += [header, "|" + " --- |" * (header.count("|") - 1)]
    rows = list(report["results"].items()) + [("average", {"pairs": "", **report["average"]})]
    for lang, r in rows:
        cells = [_with_interval(r["accuracy"][role], r.get("interval", {}).get(role)) for role in roles]
        cells += [_paired(r.get("paired", {}).get(rival), r["accuracy"]["model"] - r["accuracy"][rival])
                  for rival in rivals]
        lines.append(f"| {lang} | {r['pairs']} | " + " | ".join(cells) + " |")
    if "interval" in report["average"]:
        lines += ["", f"In brackets: 95% intervals ({report['settings']['bootstrap']} bootstrap resamples of the "
                  "pairs, seed " f"{report['settings']['seed']}); model - rival: the paired interval of the "
                  "difference (both resampled alike) and the exact McNemar p-value (on the pairs one gets right and "
                  "the other wrong; the average's over all pairs together). A difference whose p-value is at or "
                  "above 0.05 may be chance."]
    if has_teacher:
        with_baseline = "baseline" in roles
        header = "| language | label loyalty (%) | probability loyalty |" + (
            " baseline label loyalty (%) | baseline probability loyalty |" if with_baseline else "")
        lines += ["", "## Fidelity to the teacher", "", header, "|" + " --- |" * (header.count("|") - 1)]
        for lang, r in rows:
            cells = [_pct(r["label_loyalty"]), f"{r['probability_loyalty']:.4f}"]
            if with_baseline:
                cells += [_pct(r["baseline_label_loyalty"]), f"{r['baseline_probability_loyalty']:.4f}"]
            lines.append(f"| {lang} | " + " | ".join(cells) + " |")
        lines += ["", "Probability loyalty: mean over pairs of 1 - sqrt(JS), the Jensen-Shannon divergence between "
                  "the two label distributions taken with natural logarithms (0 <= JS <= ln 2)."]
    if "baseline" in roles:
        lines += ["", "## Agreement with the baseline", "", "| language | same label as the baseline (%) |",
                  "| --- | --- |"] + [f"| {lang} | {_pct(r['agreement_with_baseline'])} |" for lang, r in rows]
    lines += ["", "## Confusion matrices", "", "Rows: gold label; columns: predicted label."]
    for lang, r in report["results"].items():
        for role in roles:
            lines += ["", f"**{lang}, {role}**", "", "| gold \\ predicted | " + " | ".join(LABELS) + " |",
                      "| --- |" + " --- |" * len(LABELS)]
            lines += [f"| {LABELS[i]} | " + " | ".join(str(v) for v in row) + " |"
                      for i, row in enumerate(r["confusion"][role])]
    eff = report["efficiency"]
    ratios = [("model / teacher", "ratio")] if has_teacher else []
    ratios += [("model / baseline", "ratio_to_baseline")] if "baseline" in roles else []
    header = "| figure | " + " | ".join(roles + [title for title, _ in ratios]) + " |"
    lines += ["", "## Efficiency", "", header, "|" + " --- |" * (header.count("|") - 1)]
    for key, label, fmt in EFFICIENCY_ROWS:
        if all(eff[role].get(key) is None for role in roles):
            continue
        cells = [fmt(eff[role][key]) if eff[role].get(key) is not None else "–" for role in roles]
        for _, field in ratios:
            ratio = eff[field].get(key)
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
