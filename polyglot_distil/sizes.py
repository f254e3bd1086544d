"""Several student sizes from one config: the shared stages once, then one student per size, and a
size / latency / accuracy table with a plot.

    polyglot-distil sizes configs/demo.yaml --layer-counts 1,2,3
    polyglot-distil sizes configs/mbert-en-sw-bistil.yaml general.steps=50000 --layer-counts 2,4,6
    polyglot-distil sizes CONFIG.yaml --layer-counts 4,6 --hidden-sizes 768,384   # every layers x hidden pair

It is `run`, repeated: the config's count, trim, verify and finetune stages run once into
`run_dir`; then, for each size, the student, general, task and eval stages run into
`run_dir/sizes/L{layers}[-H{hidden}]/` with the config's `student` section set to that size
(`layers`, and `hidden_size` when given); each size's folder links to the shared stages' outputs.
A config whose stages name search searches a layer mapping per size, before its student. Phase 1's
text is tokenized once for all sizes, into `run_dir/sizes/token-cache/` (`--token-cache`), and
the task teacher's XNLI predictions are kept in `run_dir/sizes/teacher-predictions/` (`eval
xnli --teacher-cache`), so that it predicts once; its speed is measured beside each size.
Every stage behaves as under `run`: completed stages are skipped, an interrupted one resumes, and
running the command again with more sizes runs only the new ones.

Then `run_dir/sizes/` gets SIZES.md (the table), sizes.json (its figures) and sizes.png (average
accuracy against CPU latency, the teacher marked): one row per student and one for the teacher
the students are evaluated against (the fine-tuned task teacher), with parameters, weights on
disk, CPU latency (1 thread, batch 1 x 128 tokens) and speed-up, and XNLI accuracy per language,
as each size's `eval` report measured them.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from polyglot_distil.errors import UserError
from polyglot_distil.options import like, setting
from polyglot_distil.pipeline import CONFIG, OVERRIDES

SHARED = ("count", "trim", "verify", "finetune")
PER_SIZE = ("student", "general", "task", "eval")


def parse_sizes(layer_counts: str | None, hidden_sizes: str | None) -> list[tuple[int, int | None]]:
    """`"2,4"`, `"384,256"` -> [(2, 384), (2, 256), (4, 384), (4, 256)]; no hidden sizes: (n, None)."""

    def numbers(text: str, flag: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 2,4,6") from None
        if not values or min(values) < 1:
            raise UserError(f"{flag} {text!r}: give one or more sizes of at least 1, e.g. 2,4,6")
        return list(dict.fromkeys(values))

    if layer_counts is None:
        raise UserError("--layer-counts is required: the student sizes to build, e.g. --layer-counts 2,4,6")
    widths = numbers(hidden_sizes, "--hidden-sizes") if hidden_sizes else [None]
    return [(n, h) for n in numbers(layer_counts, "--layer-counts") for h in widths]


def size_label(layers: int, hidden: int | None) -> str:
    return f"L{layers}" + (f"-H{hidden}" if hidden else "")


def size_config(config: dict, layers: int, hidden: int | None, folder: Path) -> dict:
    """The config of one size: its own run_dir, the per-size stages, the student section set."""
    sized = copy.deepcopy(config)
    sized["run_dir"] = str(folder)
    sized["stages"] = (["search"] if "search" in config.get("stages", ()) else []) + list(PER_SIZE)
    student = dict(sized.get("student") or {})
    student["layers"] = layers
    if hidden:
        student["hidden_size"] = hidden
    sized["student"] = student
    # Every size reads the same text (tokenized once: sizes/token-cache) and is evaluated against
    # the one task teacher (which predicts once: sizes/teacher-predictions).
    for section, option, shared in (("search", "token_cache", "token-cache"), ("general", "token_cache", "token-cache"),
                                    ("eval", "teacher_cache", "teacher-predictions")):
        if section not in sized["stages"]:
            continue
        values = dict(sized.get(section) or {})
        values.setdefault(option, str(folder.parent / shared))
        sized[section] = values
    return sized


def link_shared(run_dir: Path, folder: Path, stages: list[str]) -> None:
    """folder/STAGE -> ../../STAGE for every shared stage: the per-size stages read the trimmed
    model and the task teacher through them, exactly where `run` would have put them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        link, target = folder / stage, os.path.relpath(run_dir / stage, folder)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            raise UserError(f"{link} exists and is not the link to {run_dir / stage} that 'sizes' makes; remove it")
        link.symlink_to(target, target_is_directory=True)


def _figures(report: dict, role: str, config_path: Path) -> dict:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    efficiency = report["efficiency"][role]
    return {"layers": config.get("num_hidden_layers"), "hidden": config.get("hidden_size"),
            "params": efficiency.get("params_total"), "disk_bytes": efficiency.get("disk_bytes"),
            "cpu_latency_ms": efficiency.get("cpu_latency_ms"),
            "accuracy": {lang: r["accuracy"][role] for lang, r in report["results"].items()},
            "average_accuracy": report["average"]["accuracy"][role]}


def collect(run_dir: Path, labels: list[str]) -> list[dict]:
    """The table's rows: the teacher (from the first size's report), then every size."""
    rows = []
    for label in labels:
        folder = run_dir / "sizes" / label
        report = json.loads((folder / "eval" / "report" / "report.json").read_text(encoding="utf-8"))
        if not rows:
            teacher = Path(report["models"]["teacher"]["path"])
            rows.append({"model": "teacher", **_figures(report, "teacher", teacher / "config.json")})
        model = Path(report["models"]["model"]["path"])
        rows.append({"model": label, **_figures(report, "model", model / "config.json")})
    teacher_latency = rows[0]["cpu_latency_ms"]
    for row in rows:
        latency = row["cpu_latency_ms"]
        row["speedup"] = teacher_latency / latency if latency and teacher_latency else None
    return rows


def render_table(rows: list[dict]) -> str:
    """SIZES.md: one row per model, accuracy per language and on average."""
    from polyglot_distil.tables import markdown_table

    langs = list(rows[0]["accuracy"])

    def number(value, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    header = ["model", "layers", "hidden", "parameters", "disk (MB)", "CPU latency (ms)", "speed-up",
              *(f"{lang} acc. (%)" for lang in langs), "average acc. (%)"]
    body = [[row["model"], row["layers"], row["hidden"], number(row["params"], ","),
             number(row["disk_bytes"] and row["disk_bytes"] / 1e6, ".1f"), number(row["cpu_latency_ms"], ".2f"),
             number(row["speedup"], ".2f") + ("x" if row["speedup"] else ""),
             *(number(100 * row["accuracy"][lang], ".2f") for lang in langs), number(100 * row["average_accuracy"], ".2f")]
            for row in rows]
    lines = ["# Student sizes", "", *markdown_table(header, body), "",
             "CPU latency: 1 thread, batch 1 x 128 tokens, median (each size's `eval` report); speed-up: the "
             "teacher's latency over the model's. Accuracy: zero-shot, as evaluated by each size's `eval` stage.", ""]
    return "\n".join(lines)


def write_plot(rows: list[dict], path: Path) -> bool:
    """Average accuracy against CPU latency, the teacher marked; False without matplotlib or
    latencies (eval with --no-efficiency)."""
    if any(row["cpu_latency_ms"] is None for row in rows):
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(5, 3.8))
    students = rows[1:]
    axes.plot([r["cpu_latency_ms"] for r in students], [100 * r["average_accuracy"] for r in students], "o-",
              label="students")
    teacher = rows[0]
    axes.plot([teacher["cpu_latency_ms"]], [100 * teacher["average_accuracy"]], "*", markersize=14, label="teacher")
    for row in rows:
        axes.annotate(row["model"], (row["cpu_latency_ms"], 100 * row["average_accuracy"]),
                      textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("CPU latency, 1 thread, 1 x 128 tokens (ms)")
    axes.set_ylabel("average accuracy (%)")
    axes.legend()
    figure.tight_layout()
    with open(path, "wb") as handle:  # written beside, then renamed by the caller
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return True


@dataclass(kw_only=True)
class SizesSettings:
    """`sizes`' settings."""

    config: str = like(CONFIG, help="YAML config (see configs/), as for 'run'")
    overrides: list[str] = like(OVERRIDES)
    layer_counts: str | None = setting(None, help="students' numbers of layers, one student per value, e.g. 2,4,6",
                                       renamed_from=("--layers",))
    hidden_sizes: str | None = setting(None, help="student hidden sizes (default: the config's); every layers x hidden "
                                                  "pair")


def run_sizes(settings: SizesSettings) -> dict:
    """The `sizes` command: the shared stages once, then one student per size; the table."""
    from polyglot_distil.outputs import replace_text
    from polyglot_distil.pipeline import DEFAULT_STAGES, load_config, run_pipeline, validate

    sizes = parse_sizes(settings.layer_counts, settings.hidden_sizes)
    config = load_config(settings.config, settings.overrides)
    names = [s.name for s in validate(config)]
    missing = [stage for stage in PER_SIZE if stage not in names]
    if missing:
        raise UserError(f"{settings.config}: 'sizes' builds, distils and evaluates each size, but the config's stages "
                        f"lack {', '.join(missing)}; list them under 'stages' (or drop 'stages': all of "
                        f"{', '.join(DEFAULT_STAGES)})")
    run_dir = Path(config["run_dir"])
    shared = [stage for stage in names if stage in SHARED]
    configs = {size_label(n, h): size_config(config, n, h, run_dir / "sizes" / size_label(n, h)) for n, h in sizes}
    for sized in configs.values():  # every size's config is valid before anything runs
        validate(sized)
    rank = int(os.environ.get("RANK", 0))
    ran = {"shared": run_pipeline({**copy.deepcopy(config), "stages": shared})}
    done = [stage for stage in SHARED if (run_dir / stage).is_dir()]  # now, or by an earlier run
    for label, sized in configs.items():
        if rank == 0:
            link_shared(run_dir, Path(sized["run_dir"]), done)
            print(f"== size {label}")
        ran[label] = run_pipeline(sized)
    if rank > 0:
        return {"ran": ran}
    rows = collect(run_dir, list(configs))
    folder = run_dir / "sizes"
    replace_text(folder / "SIZES.md", render_table(rows))
    replace_text(folder / "sizes.json", json.dumps({"rows": rows}, indent=2) + "\n")
    plot = folder / "sizes.png"
    tmp = folder / ".sizes.png.tmp"
    if write_plot(rows, tmp):
        tmp.replace(plot)
    print(render_table(rows))
    print(f"wrote {folder / 'SIZES.md'}, sizes.json" + (", sizes.png" if plot.is_file() else
                                                       " (no plot: matplotlib missing or no latencies)"))
    return {"ran": ran, "rows": rows, "table": str(folder / "SIZES.md"),
            "plot": str(plot) if plot.is_file() else None}
