"""The budget curve: how close does the yardstick's BiStil student (c) get to its teacher (a) as
phase 1 and phase 2 get more compute?

    python scripts/bench_curve.py                                   # 300, 1,000, 3,000 steps x 1+1, 3+3 epochs
    python scripts/bench_curve.py --steps 300,1000 --epochs 1       # some points
    python scripts/bench_curve.py --general-steps 3 --steps 3,6 --epochs 0.02 ...   # a smoke run (tests)

It shares the yardstick's work folder (`scripts/bench_quality.py --work`, default
out/bench-quality) and first runs the yardstick's rows a, b and c there (the teacher, its en+fr
trim, and (c) at the yardstick's budget), reusing whatever is already done. Each point of the
curve is then the (c) recipe with its own budget: a phase-1 run of STEPS steps of 16 x 128 tokens
(its own warm-up and learning-rate schedule, exactly as the yardstick's phase 1) from the same
6-layer student, then phase 2 against (b) with EPOCHS epochs of full and EPOCHS of sparse
fine-tuning (the teacher's outputs come from the shared cache, so extra epochs cost only the
student). The point at the yardstick's budget is (c) itself.

Each point is evaluated on all XNLI dev pairs of the target language and English (`--eval-limit`
to cut) with its 95% bootstrap interval, against (a) (the exact McNemar test and the paired
interval of the difference) and against (c). Speed is not measured per point: every point is
the same 6-layer architecture as (c), whose latency the yardstick measures. A point whose
folders exist is not trained again: a run cut short is resumed by running it again. After each
point the table and the plot are rewritten: `--out` (default docs/budget-curve.md and
docs/budget-curve.svg).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_quality  # noqa: E402  (the yardstick's phase settings, shared)

TARGET_SHARE = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-quality")
    parser.add_argument("--xnli", type=Path, default=bench_quality.SHARED / "xnli")
    parser.add_argument("--target", default="fr")
    parser.add_argument("--steps", default="300,1000,3000", help="phase-1 budgets, in steps of 16 x 128 tokens")
    parser.add_argument("--epochs", default="1,3", help="phase-2 budgets: epochs of full and of sparse fine-tuning each")
    parser.add_argument("--general-steps", type=int, default=300, help="the yardstick's phase-1 budget (row c)")
    parser.add_argument("--task-epochs", type=float, default=1.0, help="the yardstick's phase-2 budget (row c)")
    parser.add_argument("--teacher-epochs", type=float, default=3.0)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-pairs", type=int, default=None)
    parser.add_argument("--dev-pairs", type=int, default=500)
    parser.add_argument("--eval-limit", type=int, default=0, help="dev pairs per language evaluated (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "budget-curve",
                        help="writes OUT.md (the table) and OUT.svg (the plot)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the table and plot from the points already evaluated")
    args = parser.parse_args()
    began = time.time()
    steps = [int(s) for s in args.steps.split(",")]
    epochs = [float(e) for e in args.epochs.split(",")]
    work, t = args.work, args.target

    yardstick = [sys.executable, str(ROOT / "scripts" / "bench_quality.py"), "--work", str(work), "--xnli",
                 str(args.xnli), "--target", t, "--rows", "a,b,c", "--general-steps", str(args.general_steps),
                 "--task-epochs", str(args.task_epochs), "--teacher-epochs", str(args.teacher_epochs),
                 "--student-lr", str(args.student_lr), "--batch-size", str(args.batch_size), "--dev-pairs",
                 str(args.dev_pairs), "--eval-limit", str(args.eval_limit), "--seed", str(args.seed)]
    if args.train_pairs:
        yardstick += ["--train-pairs", str(args.train_pairs)]
    if not args.report_only:
        print("rows a, b, c of the yardstick:", " ".join(yardstick[1:]), flush=True)
        code = subprocess.run(yardstick).returncode
        if code:  # 143: stopped by SIGTERM, its training checkpointed
            print(f"the yardstick's rows a, b, c stopped (exit status {code}); run this again to resume them",
                  file=sys.stderr)
            return code

    from polyglot_distil import api
    from polyglot_distil.models.loading import quiet_transformers

    quiet_transformers()
    train, dev = [str(args.xnli / "test-en.tsv")], [str(work / "dev-en.tsv")]
    text = {"en": [str(args.xnli / "test-en.tsv")], t: [str(args.xnli / f"test-{t}.tsv")]}
    teacher = work / "a" / "best"
    points: list[dict] = []
    for n in steps:
        for e in epochs:
            if args.report_only and not (work / "eval" / _names(args, n, e)[1] / "report.json").is_file():
                continue
            points.append(_point(api, args, work, n, e, train, dev, text, teacher))
            _write(args, work, points)
    _write(args, work, points)
    print((args.out.with_suffix(".md")).read_text(encoding="utf-8"))
    print(f"wall time: {(time.time() - began) / 60:.1f} min")
    return 0


def _point(api, args, work: Path, steps: int, epochs: float, train, dev, text, teacher: Path) -> dict:
    """Train (if not done) and evaluate the (c) recipe at one budget; its figures."""
    t = args.target
    seconds = {}
    general = work / "c-general" if steps == args.general_steps else work / "curve" / f"general-{steps}"
    task, name = _names(args, steps, epochs)
    task = work / task
    if not (general / "final").exists():
        print(f"[phase 1, {steps} steps] ...", flush=True)
        start = time.time()
        api.general(str(work / "e5-en-fr"), text, general, student=str(work / "student"),
                    **bench_quality.phase1_options(steps, args.seed, work), **bench_quality.continued(general))
        seconds["phase 1"] = round(time.time() - start)
    if not (task / "best").exists():
        print(f"[phase 2 after {steps} steps, {epochs:g}+{epochs:g} epochs] ...", flush=True)
        start = time.time()
        api.task(work / "b", general / "best", train, dev, task, **bench_quality.phase2_options(epochs, args, work),
                 **bench_quality.continued(task))
        seconds["phase 2"] = round(time.time() - start)
    out = work / "eval" / name
    if not (out / "predictions.npz").exists():
        start = time.time()
        api.xnli(task / "best", [t, "en"], out, teacher=str(teacher), split="dev", data=str(args.xnli),
                 max_pairs=args.eval_limit or None, no_efficiency=True, teacher_cache=str(work / "teacher-predictions"),
                 no_progress=True, seed=args.seed, overwrite=out.exists())
        seconds["eval"] = round(time.time() - start)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    result = report["results"][t]
    low, high = result["interval"]["model"]
    vs_teacher = result["paired"]["teacher"]
    point = {"steps": steps, "tokens": steps * 16 * 128, "epochs": epochs, "name": name,
             "accuracy": result["accuracy"]["model"], "interval": [low, high],
             "teacher": result["accuracy"]["teacher"], "en": report["results"]["en"]["accuracy"]["model"],
             "vs_teacher_p": vs_teacher["p_value"], "seconds": seconds}
    point["share"] = point["accuracy"] / point["teacher"]
    earlier = work / "curve.json"  # the training times of a point trained by an earlier invocation
    if earlier.is_file() and not {"phase 1", "phase 2"} & set(seconds):
        before = {p["name"]: p for p in json.loads(earlier.read_text(encoding="utf-8"))}
        point["seconds"] = {**before.get(name, {}).get("seconds", {}), **seconds}
    if name == "c" and (work / "summary.json").is_file():  # (c)'s training times, from the yardstick's run
        timed = json.loads((work / "summary.json").read_text(encoding="utf-8"))["seconds"]
        point["seconds"] = {phase: timed[f"c: {phase}"] for phase in ("phase 1", "phase 2") if f"c: {phase}" in timed}
    if name != "c" and (work / "eval" / "c" / "predictions.npz").is_file():
        point["vs_c"] = bench_quality._paired(work, name, "c", t, args.seed)
    print(f"[{steps} steps, {epochs:g}+{epochs:g} epochs] {t} {100 * point['accuracy']:.2f}% "
          f"({100 * point['share']:.1f}% of (a)) {json.dumps(seconds)}", flush=True)
    return point


def _names(args, steps: int, epochs: float) -> tuple[str, str]:
    """The phase-2 folder (relative to the work folder) and the evaluation's name of one point; the
    yardstick's own budget is (c) itself."""
    if steps == args.general_steps and epochs == args.task_epochs:
        return "c", "c"
    return f"curve/task-{steps}-{epochs:g}", f"curve-{steps}-{epochs:g}"


def _write(args, work: Path, points: list[dict]) -> None:
    """The table (OUT.md) and the plot (OUT.svg) of the points measured so far."""
    t = args.target
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not points:
        args.out.with_suffix(".md").write_text(
            "# The budget curve: (c) against its teacher (a), by compute\n\n"
            f"`python scripts/bench_curve.py --steps {args.steps} --epochs {args.epochs}` has not finished a point "
            "yet: no figure here." + _missing(args, points) + "\n", encoding="utf-8")
        args.out.with_suffix(".svg").unlink(missing_ok=True)
        return
    teacher = points[0]["teacher"]
    rows = ["| phase-1 steps (tokens) | phase 2 epochs (full + sparse) | en acc | "
            f"{t} acc | {t} 95% interval | share of (a) on {t} | against (a) | against (c) | training time |",
            "| ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |"]
    for p in points:
        low, high = p["interval"]
        time_note = ", ".join(f"{k} {v / 60:.1f} min" for k, v in p["seconds"].items() if k != "eval") or "earlier run"
        rows.append(f"| {p['steps']:,} ({p['tokens'] / 1e6:.2f}M) | {p['epochs']:g} + {p['epochs']:g} | "
                    f"{100 * p['en']:.2f} | {100 * p['accuracy']:.2f} | {100 * low:.2f}-{100 * high:.2f} | "
                    f"{100 * p['share']:.1f}% | McNemar p = {p['vs_teacher_p']:.2g} | {p.get('vs_c', '(c) itself')} | "
                    f"{time_note} |")
    best = max(points, key=lambda p: p["accuracy"])
    verdict = (f"reached: {best['steps']:,} steps, {best['epochs']:g}+{best['epochs']:g} epochs"
               if best["share"] >= TARGET_SHARE else
               f"not reached by the points measured (best {100 * best['share']:.1f}% of (a), at {best['steps']:,} "
               f"steps, {best['epochs']:g}+{best['epochs']:g} epochs)")
    text = [
        "# The budget curve: (c) against its teacher (a), by compute",
        "",
        f"Made by `python scripts/bench_curve.py --steps {args.steps} --epochs {args.epochs}"
        + (f" --eval-limit {args.eval_limit}" if args.eval_limit else "") + "` (rewritten after each point). "
        f"(a): multilingual-e5-small fine-tuned on XNLI test-en, {100 * teacher:.2f}% on XNLI dev-{t} "
        f"({'all pairs' if not args.eval_limit else f'{args.eval_limit} pairs'}); target: {100 * TARGET_SHARE:.0f}% "
        f"of it, {100 * TARGET_SHARE * teacher:.2f}%: {verdict}. Each point is the yardstick's (c) recipe "
        "(6 of 12 layers, BiStil phase 1 on en+fr XNLI text, phase 2 LT-SFT against (b)) with its own "
        "budget; every point has (c)'s architecture and so (c)'s speed (1.88x faster than (a) on one "
        "thread, [yardstick.md](yardstick.md))." + _missing(args, points),
        "",
        *rows,
        "",
        f"![French accuracy by phase-1 budget]({args.out.name}.svg)",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(text), encoding="utf-8")
    args.out.with_suffix(".svg").write_text(_svg(points, teacher, t), encoding="utf-8")
    (work / "curve.json").write_text(json.dumps(points, indent=1), encoding="utf-8")


def _missing(args, points: list[dict]) -> str:
    """A sentence naming the requested points not measured yet (a run cut short), or nothing."""
    done = {(p["steps"], p["epochs"]) for p in points}
    missing = [f"{int(n):,} steps with {float(e):g}+{float(e):g} epochs" for n in args.steps.split(",")
               for e in args.epochs.split(",") if (int(n), float(e)) not in done]
    return (f" Not measured yet (the run has not reached them; running it again resumes it): {'; '.join(missing)}."
            if missing else "")


def _svg(points: list[dict], teacher: float, target: str) -> str:
    """Accuracy (with its 95% interval) against phase-1 steps on a log axis, one line per phase-2
    budget, with (a) and 95% of (a) as horizontal lines: a dependency-free SVG."""
    import math

    width, height, left, right, top, bottom = 640, 400, 60, 150, 20, 50
    steps = sorted({p["steps"] for p in points})
    xs = [math.log10(s) for s in steps]
    x0, x1 = (min(xs) - 0.15, max(xs) + 0.15)
    values = [v for p in points for v in p["interval"]] + [teacher]
    y0, y1 = min(values) - 0.01, max(values) + 0.01

    def x(s: float) -> float:
        return left + (math.log10(s) - x0) / (x1 - x0) * (width - left - right)

    def y(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * (height - top - bottom)

    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
             f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">phase-1 steps '
             '(16 x 128 tokens each, log scale)</text>',
             f'<text x="15" y="{(top + height - bottom) / 2}" transform="rotate(-90 15 {(top + height - bottom) / 2})" '
             f'text-anchor="middle">XNLI dev-{target} accuracy (%)</text>']
    for s in steps:
        parts.append(f'<text x="{x(s):.1f}" y="{height - bottom + 16}" text-anchor="middle">{s:,}</text>')
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{100 * v:.1f}</text>')
    for v, label, dash in ((teacher, "(a) teacher", ""), (TARGET_SHARE * teacher, "95% of (a)", ' stroke-dasharray="6 4"')):
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" stroke="gray"{dash}/>')
        parts.append(f'<text x="{width - right + 6}" y="{y(v) + 4:.1f}">{label}</text>')
    for i, e in enumerate(sorted({p["epochs"] for p in points})):
        line = sorted((p for p in points if p["epochs"] == e), key=lambda p: p["steps"])
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x(p['steps']):.1f},{y(p['accuracy']):.1f}" for p in line) + '"/>')
        for p in line:
            cx, (low, high) = x(p["steps"]) + 4 * i, p["interval"]
            parts.append(f'<line x1="{cx:.1f}" y1="{y(low):.1f}" x2="{cx:.1f}" y2="{y(high):.1f}" stroke="{colour}"/>')
            parts.append(f'<circle cx="{x(p["steps"]):.1f}" cy="{y(p["accuracy"]):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{width - right + 6}" y="{top + 60 + 16 * i}" fill="{colour}">phase 2: {e:g}+{e:g} '
                     'epochs</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
