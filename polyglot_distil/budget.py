"""How long a run's stages will take, roughly, and whether a training budget can beat chance.

    for line in estimate_lines(config, {"finetune": finetune_options, ...}):
        print(line)

`run` prints these lines before its first stage. An estimate is steps x the seconds per step
measured on multilingual-e5-small (`scripts/bench_budget.py`, on this project's 2-core CPU
machine, corrected for the other jobs that shared it), scaled by the arithmetic of a step:
tokens x layers x (attention and feed-forward matrix products, and attention over the sequence),
for the teacher's forward pass and the student's forward and backward passes. It ignores the
machine (a GPU, more cores, other jobs), data loading and checkpoints, so it is a rough guide
(a newcomer's 2 cores took 1.6-1.9x these figures per step), and an upper bound on a GPU, which is not
measured. The budgets known to beat chance are the yardstick's (docs/yardstick.md); the figures
are in docs/budgets.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# Measured by `scripts/bench_budget.py` (4 steps each, two runs, their mean) on multilingual-e5-small
# (12 layers, hidden 384, FFN 1536) and its 6-layer student, on this project's 2 CPU cores while other
# jobs shared them (load average 5-7): each figure is the measured time x the share of the 2 threads
# the command had (its CPU time / wall time), i.e. the same machine without the other jobs
# (docs/budgets.md).
E5_SMALL = (12, 384, 1536)
STUDENT_6 = (6, 384, 1536)
MEASURED = {
    # stage: (seconds per step, teacher shape or None, trained shape, sequences per step, tokens each)
    "general": (4.49, E5_SMALL, STUDENT_6, 16, 128),  # phase 1
    "finetune": (5.40, None, E5_SMALL, 32, 128),  # the task teacher, --reduce-vocab; XNLI pairs, length-bucketed
    "task": (4.24, E5_SMALL, STUDENT_6, 32, 128),  # phase 2, the teacher run at every step (no cache)
}
DEV_SECONDS_PER_100_PAIRS = 3.32  # the full e5-small, batch 32, length-sorted XNLI dev pairs
# the task teacher with all 250,037 x 384 embedding rows trained: 6.18 s per step against 5.58 with
# --reduce-vocab in the same run, 0.6 s more per step for 96M row values
EMBEDDING_SECONDS_PER_MILLION_ROWS = (6.18 - 5.58) / (250_037 * 384 / 1e6)

# The smallest training budgets known to beat chance (33% on 3-class NLI), in pairs seen
# (steps x batch x gradient accumulation); below them, a run has not been seen to.
TEACHER_BEATS_CHANCE = 470 * 32  # the yardstick's task teacher: 3 epochs of 5,010 pairs -> 69.84% en
TEACHER_AT_CHANCE = 30 * 16  # the demo's: 2 epochs of 240 pairs, at chance
STUDENT_BEATS_CHANCE = 2 * 5010  # the yardstick's phase 2: 1 full + 1 sparse epoch -> (c) 58.84% fr, (d) 56.51%


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int

    def forward_flops(self, sequences: int, tokens: int) -> float:
        """Multiply-adds x 2 of one forward pass: per token and layer, q/k/v/o (4 h^2), the
        feed-forward (2 h f), attention scores and mixing (2 t h)."""
        per_token = self.layers * (4 * self.hidden ** 2 + 2 * self.hidden * self.intermediate + 2 * tokens * self.hidden)
        return 2.0 * sequences * tokens * per_token


def step_flops(teacher: Shape | None, trained: Shape, sequences: int, tokens: int) -> float:
    """A training step: the teacher's forward pass (none for fine-tuning) and the trained model's
    forward and backward passes (3x a forward)."""
    return (teacher.forward_flops(sequences, tokens) if teacher else 0.0) + 3 * trained.forward_flops(sequences, tokens)


def _rate(stage: str) -> float:
    """FLOPs per second of the measured stage."""
    seconds, teacher, trained, sequences, tokens = MEASURED[stage]
    return step_flops(Shape(*teacher) if teacher else None, Shape(*trained), sequences, tokens) / seconds


def shape_of(model: str | Path) -> Shape | None:
    """The shape in a local model's config.json (BERT-style keys), or None."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
        hidden = int(config["hidden_size"])
        return Shape(int(config["num_hidden_layers"]), hidden, int(config.get("intermediate_size") or 4 * hidden))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def vocab_rows(model: str | Path) -> int:
    try:
        return int(json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def count_pairs(sources: list[str] | None, cap: int | None) -> int | None:
    """Training pairs in local TSV/JSONL files (their non-empty lines; an optional header row
    counts as one), capped; None if unknown."""
    total = 0
    for source in sources or []:
        path = Path(str(source).split("?", 1)[0])
        if not path.is_file() or path.suffix not in (".tsv", ".jsonl", ".txt"):
            return None
        with open(path, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        total += lines
    if not sources:
        return None
    return min(total, cap) if cap else total


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class Estimate:
    stage: str
    seconds: float
    what: str
    warning: str | None = None


def student_shape(teacher: Shape, student: dict) -> Shape:
    layers = student.get("layers") or max(1, teacher.layers // 2)
    hidden = student.get("hidden_size") or teacher.hidden
    intermediate = student.get("intermediate_size") or (teacher.intermediate * hidden // teacher.hidden)
    return Shape(int(layers), int(hidden), int(intermediate))


def _epochs_steps(pairs: int | None, epochs: float, batch: int) -> tuple[int | None, int | None]:
    """(steps, batches per epoch) of `epochs` over `pairs` at `batch` pairs per step."""
    if pairs is None:
        return None, None
    per_epoch = max(1, math.ceil(pairs / batch))
    return max(1, math.ceil(epochs * per_epoch)) if epochs > 0 else 0, per_epoch


def _dev_seconds(model: Shape, pairs: int | None, max_length: int) -> float:
    reference = Shape(*E5_SMALL).forward_flops(100, 128)
    return (pairs or 0) * DEV_SECONDS_PER_100_PAIRS / 100 * model.forward_flops(100, max_length) / reference


def estimate(config: dict, options: dict[str, dict]) -> list[Estimate]:
    """An estimate per training or evaluation stage in `options` ({stage: its options, defaults
    filled in}) for the run `config` describes. Stages it cannot size (a hub model, data that is not
    a local file) are left out."""
    base = shape_of(config.get("model", ""))
    if base is None:
        return []
    student = student_shape(base, config.get("student") or {})
    found = []
    general = options.get("general")
    if general:
        steps, batch, tokens = general["steps"], general["batch_size"] * (general.get("grad_accum") or 1), general["block_size"]
        seconds = steps * step_flops(base, student, batch, tokens) / _rate("general")
        found.append(Estimate("general", seconds, f"{steps:,} steps of {batch} x {tokens} tokens"))
    for stage in ("finetune", "task"):
        values = options.get(stage)
        if not values:
            continue
        batch = values["batch_size"] * (values.get("grad_accum") or 1)
        pairs = count_pairs(values.get("train"), values.get("max_train_pairs"))
        dev_pairs = count_pairs(values.get("dev"), None)
        epochs = values["epochs"] if stage == "finetune" else values["full_epochs"] + values["sparse_epochs"]
        steps, per_epoch = _epochs_steps(pairs, epochs, batch)
        if steps is None:
            continue
        tokens = values.get("max_length") or 128
        teacher, trained = (None, base) if stage == "finetune" else (base, student)
        seconds = steps * step_flops(None, trained, batch, tokens) / _rate(stage)
        if teacher is not None:  # with --teacher-cache, the teacher runs over the pairs once
            teacher_steps = min(steps, per_epoch) if values.get("teacher_cache") else steps
            seconds += teacher_steps * teacher.forward_flops(batch, tokens) / _rate(stage)
        if stage == "finetune" and not values.get("reduce_vocab"):
            seconds += steps * vocab_rows(config["model"]) * base.hidden / 1e6 * EMBEDDING_SECONDS_PER_MILLION_ROWS
        evaluations = math.ceil(steps / (values.get("eval_every") or min(per_epoch, steps) or 1)) if steps else 0
        seconds += evaluations * _dev_seconds(trained, dev_pairs, tokens)
        seen = steps * batch
        what = (f"{steps:,} steps of {batch} pairs ({epochs:g} epochs of {pairs:,}), "
                f"{evaluations} dev evaluations of {dev_pairs or 0:,} pairs")
        found.append(Estimate(stage, seconds, what, _chance_warning(stage, seen, steps, batch)))
    xnli = options.get("eval")
    if xnli:
        langs = [lang for lang in str(xnli.get("langs") or "").split(",") if lang]
        data = Path(str(xnli.get("data") or ""))
        pairs = sum(count_pairs([str(data / f"{xnli.get('split', 'test')}-{lang}.tsv")], xnli.get("max_pairs")) or 0
                    for lang in langs)
        if pairs:
            seconds = _dev_seconds(base, pairs, xnli.get("max_length") or 128) + _dev_seconds(student, pairs, 128)
            found.append(Estimate("eval", seconds, f"{pairs:,} pairs through the student and the teacher"))
    return found


def _chance_warning(stage: str, seen: int, steps: int, batch: int) -> str | None:
    if stage == "finetune" and seen < TEACHER_BEATS_CHANCE:
        return (f"finetune: {steps:,} steps of {batch} pairs ({seen:,} pairs seen) is below the smallest task-teacher "
                f"budget known to beat chance (470 steps of 32 pairs, {TEACHER_BEATS_CHANCE:,} seen, on "
                f"multilingual-e5-small; {TEACHER_AT_CHANCE} seen stayed at chance): expect chance accuracy, and a "
                "student of this teacher at chance too (docs/budgets.md)")
    if stage == "task" and seen < STUDENT_BEATS_CHANCE:
        return (f"task: {steps:,} steps of {batch} pairs ({seen:,} pairs seen) is below the smallest phase-2 budget "
                f"known to beat chance (1 full + 1 sparse epoch of 5,010 pairs, {STUDENT_BEATS_CHANCE:,} seen): "
                "expect chance accuracy (docs/budgets.md)")
    return None


def estimate_lines(config: dict, options: dict[str, dict]) -> list[str]:
    """What `run` prints before its first stage: one line per stage it can size, the total, and
    a warning line per training budget below the smallest known to beat chance."""
    found = estimate(config, options)
    if not found:
        return []
    lines = ["estimated time (rough: steps x the per-step cost measured on multilingual-e5-small on 2 CPU cores "
             "without other jobs, scaled by model size and length; a GPU is faster; docs/budgets.md):"]
    lines += [f"  [{e.stage}] ~{duration(e.seconds)}: {e.what}" for e in found]
    lines.append(f"  total ~{duration(sum(e.seconds for e in found))} for these stages")
    lines += [f"warning: {e.warning}" for e in found if e.warning]
    return lines
