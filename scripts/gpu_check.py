"""One check of scripts/gpu_check.sh: run a polyglot-distil command in this process (under
`accelerate launch`, in each process), check what it wrote, and print one line (main process):

    PASS phase1-bf16-1gpu: 50 steps, 41.3 steps/s, peak GPU memory 312 MiB (1 process, bf16)
    FAIL phase2-fp16-2gpu: the loss did not fall (first 5 steps 1.092, last 5 1.101) ...

    python scripts/gpu_check.py NAME [--compare OTHER_RUN] -- polyglot-distil arguments...

A training check passes when the command succeeds, every logged loss is finite, the loss falls
(mean of the last 5 logged steps of the first stage below the first 5) and the checkpoint was written by the
expected number of processes; `--compare RUN` adds the largest relative difference of the
step losses from RUN's (the same command on 1 GPU), and fails above 5% (mixed precision on other
micro-batch shapes differs by far less; gradients left unaveraged, by more). An `eval xnli`
check passes when report.json has finite accuracies on the CUDA device. Steps/s come from the
run's metrics.jsonl (the training loop's own clock, loading excluded); the peak GPU memory is
torch.cuda.max_memory_allocated, the largest over processes. `GPU_CHECK_CPU=1` runs on the CPU
(no memory figure): a dry run of the script itself.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def check_training(out: Path, processes: int, compare: Path | None) -> tuple[str | None, str]:
    """(the problem or None, the figures) of a training run in `out`."""
    rows = _train_rows(out)
    losses = [r["loss"] for r in rows]
    if not rows or not all(math.isfinite(x) for x in losses):
        return "a logged loss is not finite (or none was logged)", ""
    steps = rows[-1]["step"]
    figures = f"{steps} steps, {steps / max(rows[-1]['elapsed_s'], 1e-9):.1f} steps/s"
    # Within the first stage: phase 2's second stage starts again from the phase-1 weights.
    stage = [r["loss"] for r in rows if r.get("stage") == rows[0].get("stage")]
    window = max(1, min(5, len(stage) // 2))
    first, last = sum(stage[:window]) / window, sum(stage[-window:]) / window
    if not last < first:
        return f"the loss did not fall (first {window} steps {first:.4g}, last {window} {last:.4g})", figures
    newest = max((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not (newest / f"random_states_{processes - 1}.pkl").is_file() or \
            (newest / f"random_states_{processes}.pkl").is_file():
        return f"the checkpoint was not written by {processes} processes", figures
    if compare is not None:
        reference = {r["step"]: r["loss"] for r in _train_rows(compare)}
        differences = [abs(r["loss"] - reference[r["step"]]) / max(abs(reference[r["step"]]), 1e-12)
                       for r in rows if r["step"] in reference]
        worst = max(differences) if differences else float("inf")
        figures += f", loss vs 1 GPU within {worst:.2%}"
        if not worst <= 0.05:
            return f"the step losses differ from those on 1 GPU by up to {worst:.2%}", figures
    return None, figures


def check_eval(out: Path) -> tuple[str | None, str]:
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    accuracies = [a for r in report["results"].values() for a in r["accuracy"].values()]
    pairs = sum(r["pairs"] for r in report["results"].values())
    if not report["settings"]["device"].startswith("cuda") and not os.environ.get("GPU_CHECK_CPU"):
        return f"evaluated on {report['settings']['device']}, not the GPU", ""
    if not accuracies or not all(0 <= a <= 1 for a in accuracies):
        return "report.json has no accuracies in [0, 1]", ""
    return None, f"{pairs} pairs x {len(report['models'])} models"


def main(argv: list[str]) -> int:
    import torch

    split = argv.index("--")
    head, command = argv[:split], argv[split + 1:]
    name, compare = head[0], Path(_option(head, "--compare")) if "--compare" in head else None
    on_gpu = not os.environ.get("GPU_CHECK_CPU")
    if on_gpu and not torch.cuda.is_available():
        print(f"FAIL {name}: no CUDA GPU is visible")
        return 1

    from polyglot_distil.cli import main as polyglot_distil

    started = time.perf_counter()
    try:
        status = polyglot_distil(command)
        problem = None if status == 0 else f"the command ended with status {status} (its error is above)"
    except Exception as exc:  # a defect: say which, the traceback is not this line's business
        problem = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    seconds = time.perf_counter() - started

    peak, processes, failed = (torch.cuda.max_memory_allocated() if on_gpu else 0), 1, problem is not None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        processes = dist.get_world_size()
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        shared = torch.tensor([float(peak), float(failed)], device=device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        peak, failed = int(shared[0]), bool(shared[1])
        if dist.get_rank() != 0:
            return int(failed)
        problem = problem or ("another process failed" if failed else None)

    out, figures = Path(_option(command, "--out")), ""
    if problem is None:
        try:
            if command[:2] == ["eval", "xnli"]:
                problem, figures = check_eval(out)
            else:
                problem, figures = check_training(out, processes, compare)
        except (OSError, KeyError, ValueError) as exc:
            problem = f"its output cannot be read: {type(exc).__name__}: {exc}"
    precision = _option(command, "--mixed-precision") or "fp32"
    memory = f"peak GPU memory {peak / 2**20:.0f} MiB" if on_gpu else "CPU dry run"
    where = f"{processes} process{'es' if processes > 1 else ''}, {precision}, {seconds:.0f} s in all"
    if problem is None:
        print(f"PASS {name}: {figures}, {memory} ({where})", flush=True)
        return 0
    print(f"FAIL {name}: {problem}" + (f"; {figures}" if figures else "") + f" ({where})", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
