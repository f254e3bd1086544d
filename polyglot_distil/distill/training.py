"""The one training loop, built on accelerate, shared by both distillation phases.

    polyglot-distil distil general ... --out out/phase1                      # CPU or one GPU
    polyglot-distil distil general ... --out out/phase1 --mixed-precision bf16
    accelerate launch --multi_gpu --num_processes 8 -m polyglot_distil distil general ...  # 8 GPUs
    accelerate launch --multi_gpu --num_machines 2 --machine_rank R --main_process_ip HOST \
        --main_process_port 29500 --num_processes 16 -m polyglot_distil distil general ...  # 2 nodes
    CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 \
        -m polyglot_distil distil general ...                                # 2 CPU processes (gloo)
    polyglot-distil distil general ... --out out/phase1 --resume             # continue a run

A phase is a `TrainingPhase` (phase.py) given to `train(settings, run_config, phase)`: the
loop calls its `load(accelerator)` once OUT is known to be writable, then, step after step, its
`loss(model, batch)`; it evaluates with `evaluate` (whose `best_metric` picks OUT/best/) and
saves with `save`. Every other method has a default that does nothing (a hook before each step,
one on the gradients before the optimizer step, extra tensors in checkpoints, fields of the
metrics rows) or the usual (AdamW groups, a linear schedule); a phase in stages (lottery-ticket
sparse fine-tuning: full fine-tuning, then a reset and masked training) overrides them. What a
phase keeps for its command after the run (the lottery ticket) is an attribute of it. Each phase
is a subclass in its stage's file: general.py (phase 1), task.py (phase 2), finetune.py (the task
teacher), quantize.py (QAT), layer_search.py (search-map's candidate runs).

The loop does the rest:

- AdamW (no weight decay on biases and norms), a linear schedule with warmup, gradient clipping,
  gradient accumulation and bf16/fp16 autocast through `accelerate.Accelerator`;
- `batch_size` is global: step k trains on `phase.train_data.batch(k)`, `batch_size` rows, whatever
  the number of processes and of accumulated micro-batches. It is cut into grad_accum x processes
  equal slices (`micro_batch`), so one process or eight, accumulating or not, compute the same
  steps: accumulation and processes only change where and when the rows run. Token-averaged
  losses divide by the global batch's counts (`phase.batch_counts`), shared out over the
  slices, so padding does not weigh the slices differently;
- under several processes (DDP), whether some trained parameters get no gradient from the
  enabled losses (the pooler and classifier with the hidden loss alone) is found on the first
  batch, by walking the loss's autograd graph, and DDP told so (`unused_parameters`);
- evaluation every `eval_every` steps and at the end; the best model in OUT/best/;
- a checkpoint every `save_every` steps and at the end, OUT/checkpoints/step-N/: model,
  optimizer and RNG states (`accelerator.save_state`), trainer_state.json (step, data position,
  scheduler, best so far, configuration hash), extra_state.safetensors; the newest
  `keep_checkpoints` are kept;
- `resume` continues from the newest checkpoint to the result of an uninterrupted run (the data
  position is the step); OUT/run_config.json must match the new run's configuration;
- OUT/metrics.jsonl: one JSON object per logged step (`"kind": "train"`: step, loss, each loss
  term, lr, grad_norm, epoch) and per evaluation (`"kind": "eval"`: step and the metrics);
- the final model in OUT/final/, written by `phase.save`;
- Ctrl-C or SIGTERM (one process): the step under way finishes and is checkpointed, then the run
  stops (`StepBoundary`); `--resume` falls back to the previous checkpoint when the newest cannot
  be read; `--overwrite` keeps the old run aside (`outputs.set_aside`) until the new one completes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from polyglot_distil.errors import UserError, interruption
from polyglot_distil.fingerprints import changed_inputs, input_fingerprints, run_config_hash
from polyglot_distil.distill.phase import BatchSource, TrainingPhase
from polyglot_distil.options import NO_RESULT
from polyglot_distil.outputs import atomic_dir, drop_aside, hold_lock, put_back, release_lock, replace_text, \
    room_checked, set_aside, wait_visible
from polyglot_distil.progress import note, progress


CACHE = "cache"  # OUT/cache/: data prepared from the inputs, keyed by them; kept by --overwrite


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping settings of one run (phase-independent)."""

    out: str
    steps: int
    batch_size: int = 8  # global: examples per optimizer step, all processes together
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    seed: int = 0
    eval_every: int = 1000
    save_every: int = 1000
    log_every: int = 10
    keep_checkpoints: int = 2
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None  # None: a bar on a terminal only

    # Where the run writes, how chatty it is and how often it saves do not change what it computes.
    NOT_HASHED = NO_RESULT | {"out"}

    def result_config(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.NOT_HASHED}

    def check(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"--mixed-precision must be no, bf16 or fp16, not {self.mixed_precision!r}")
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: pass one of them")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, not {self.lr}")
        for name in ("weight_decay", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(self, name)}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise UserError(f"--max-grad-norm must be 0 (no clipping) or more, not {self.max_grad_norm}")


@dataclass
class TrainResult:
    step: int
    final_dir: Path
    best_step: int | None = None
    best_value: float | None = None
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    is_main_process: bool = True

    def summary(self) -> dict:
        """The run's report: steps, where the models are, the best and last metrics."""
        return {"step": self.step, "final_dir": str(self.final_dir), "best_dir": str(Path(self.final_dir).parent / "best"),
                "best_step": self.best_step, "best_value": self.best_value, "last_train": dict(self.last_train),
                "last_eval": dict(self.last_eval)}


class Trainable(torch.nn.Module):
    """Several trained modules and the function that runs them, as one module: `forward(*a, **k)`
    calls `run(parts, *a, **k)`. The loop prepares (and under DDP wraps) this one module."""

    def __init__(self, parts: dict[str, torch.nn.Module], run: Callable):
        super().__init__()
        self.parts = torch.nn.ModuleDict(parts)
        self.run = run

    def forward(self, *args, **kwargs):
        return self.run(self.parts, *args, **kwargs)


def micro_batch(batch: dict, index: int, parts: int, device) -> dict:
    """Slice `index` of `parts` equal row slices of a global batch, rows [index*b, (index+1)*b), on
    `device`; values that are not tensors are passed as they are."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            rows = value.shape[0] // parts
            value = value[index * rows:(index + 1) * rows].to(device, non_blocking=True)
        out[key] = value
    return out


def my_micro_batches(batch: dict, accelerator, grad_accum: int, batch_counts=None):
    """This process's micro-batches of a global batch: slice `micro * processes + rank`; when
    `batch_counts(batch)` counts something, each carries "counts": the global batch's counts
    divided by the slices."""
    parts = grad_accum * accelerator.num_processes
    counts = batch_counts(batch) if batch_counts is not None else None
    shares = {name: count / parts for name, count in counts.items()} if counts is not None else None
    for micro in range(grad_accum):
        piece = micro_batch(batch, micro * accelerator.num_processes + accelerator.process_index, parts,
                            accelerator.device)
        if shares is not None:
            piece["counts"] = shares
        yield piece


def mean_over_batches(model, data: BatchSource, compute_loss, accelerator, grad_accum: int = 1,
                      prefix: str = "eval_", batch_counts=None) -> dict[str, float]:
    """Loss and loss terms averaged over one epoch of `data`, cut like training batches (with the
    phase's `batch_counts`), reduced over processes: {prefix + "loss": ..., prefix + term: ...}."""
    totals, names, count = None, ["loss"], 0
    with torch.no_grad(), accelerator.autocast():
        for index in range(data.batches_per_epoch):
            for piece in my_micro_batches(data.batch(index), accelerator, grad_accum, batch_counts):
                loss, terms = compute_loss(model, piece)
                values = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
                totals, names, count = (values if totals is None else totals + values), ["loss", *terms], count + 1
    totals = accelerator.reduce(totals, "mean") / count
    return {prefix + name: value for name, value in zip(names, totals.tolist())}


def unused_parameters(model, compute_loss, batch: dict, accelerator) -> list[str]:
    """Names of the trained parameters of `model` that the loss on `batch` does not reach, found
    as DDP finds them: by walking the loss's autograd graph to its leaves (a forward pass, no
    backward; the random state is restored). Under DDP such parameters need
    find_unused_parameters, which costs that walk every step, so it is on only when needed."""
    devices = [torch.cuda.current_device()] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), accelerator.autocast():
        loss, _ = compute_loss(model, batch)
    reached, seen, stack = set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # an AccumulateGrad node: where a parameter's gradient lands
        if leaf is not None:
            reached.add(id(leaf))
        stack.extend(following for following, _ in node.next_functions)
    return [name for name, param in model.named_parameters() if param.requires_grad and id(param) not in reached]


# ---------------------------------------------------------------------------------------------
# The output folder: run_config.json, checkpoints, metrics


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): config}


def _config_differences(saved: dict, new: dict) -> str:
    old, now = _flatten(saved), _flatten(json.loads(json.dumps(new)))
    changed = [f"{k}: {old.get(k)!r} -> {now.get(k)!r}"
               for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]
    return "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in OUT, oldest first."""
    found = [p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=_step_of)


def unstarted(out: Path) -> bool:
    """OUT does not exist, or holds only OUT/cache/ (a run stopped while preparing its data)."""
    return not out.exists() or (out.is_dir() and {p.name for p in out.iterdir()} <= {CACHE})


def check_output(settings: TrainSettings, config: dict, inputs: dict | None = None) -> Path | None:
    """Before any work: may the run write to OUT? Returns the checkpoint to resume from, if any.
    A resumed run must have the configuration and (`inputs`, their fingerprints) the inputs it
    started with."""
    out = Path(settings.out)
    if settings.resume and not checkpoints(out):
        raise UserError(f"--resume: {out} holds no checkpoint of a run, so there is nothing to resume; "
                        "drop --resume to start a run there" + (" (with --overwrite)" if out.exists() else ""))
    if settings.overwrite and not unstarted(out) and not (out / "run_config.json").is_file():
        raise UserError(f"--overwrite: {out} is not a training output folder (it has no run_config.json); "
                        "it is not deleted: give another --out")
    if unstarted(out) or settings.overwrite:
        return None
    if not settings.resume:
        raise UserError(f"{out} already exists; pass --resume to continue the run in it, or --overwrite to start over")
    saved_file = out / "run_config.json"
    if not saved_file.is_file():
        raise UserError(f"--resume: {out} has no run_config.json, so it is not a training output folder; "
                        "pass a new --out")
    try:
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--resume: {saved_file} cannot be read ({exc}): the record of the run is damaged; start over "
                        "with --overwrite or a new --out") from None
    if saved.get("hash") != run_config_hash(config):
        changes = _config_differences(saved.get("config", {}), config)
        raise UserError(f"--resume: {out} was made with a different configuration ({changes}); "
                        "rerun with its options or pass a new --out")
    changed = changed_inputs(saved["inputs"], inputs or {}) if "inputs" in saved else []
    if changed:
        more = f"; and {len(changed) - 2} more" if len(changed) > 2 else ""
        raise UserError(f"--resume: an input of the run in {out} changed since it started ({'; '.join(changed[:2])}"
                        f"{more}); restore it, or start over with --overwrite or a new --out")
    found = checkpoints(out)
    return found[-1] if found else None


def _load_checkpoint(accelerator, out: Path, newest: Path, scheduler, phase: TrainingPhase) -> tuple[Path, dict]:
    """Load the newest complete checkpoint up to `newest` that can be read: a copy cut short (a disk
    that filled, a killed copy) is named and the one before it is tried. Returns it and its
    trainer_state.json."""
    from safetensors.torch import load_file

    tried = []
    for folder in reversed([c for c in checkpoints(out) if _step_of(c) <= _step_of(newest)]):
        try:
            saved = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
            _read_random_states(folder, accelerator.process_index)
            accelerator.load_state(str(folder))
            scheduler.load_state_dict(saved["scheduler"])
            if (folder / "extra_state.safetensors").is_file():
                phase.load_extra_state(load_file(folder / "extra_state.safetensors"))
            return folder, saved
        except Exception as exc:  # noqa: BLE001 - whatever the reader raises on a cut file: named, not a traceback
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
            tried.append(f"{folder.name} ({reason})")
            if accelerator.is_main_process:
                print(f"note: checkpoint {folder} cannot be read ({reason}); trying the one before it", file=sys.stderr)
    raise UserError(f"--resume: no checkpoint in {out / 'checkpoints'} can be read ({'; '.join(tried[:2])}); "
                    "start over with --overwrite")


def _read_random_states(folder: Path, process_index: int) -> None:
    """Read this process's random states of a checkpoint, as accelerate does: its load_state skips
    states it cannot read without a word, and the run would go on from other random states than
    the uninterrupted run's (dropout, masking)."""
    from accelerate.utils import RNG_STATE_NAME, load

    path = folder / f"{RNG_STATE_NAME}_{process_index}.pkl"
    try:
        load(path)
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises on a cut file
        detail = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise RuntimeError(f"random states {path.name}: {type(exc).__name__}: {detail}") from None


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def _append_metrics(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop the rows an interrupted run logged after the checkpoint it resumes from (and a last
    line cut short by the interruption)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    replace_text(path, "".join(line + "\n" for line in kept))


def _save_checkpoint(accelerator, out: Path, trainer_state: dict, extra: dict, keep: int) -> None:
    """Write OUT/checkpoints/step-N/ under a temporary name, then rename it (an interrupted save
    leaves no checkpoint that looks complete), with the phase's `extra` tensors if any; drop all
    but the newest `keep`."""
    from safetensors.torch import save_file

    step = trainer_state["step"]
    folder = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # every process writes its own state files into it
        wait_visible(tmp, what="the checkpoint folder the main process made")
    try:
        with room_checked(folder):
            accelerator.save_state(str(tmp))
            if accelerator.is_main_process:
                if extra:
                    save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()},
                              tmp / "extra_state.safetensors")
                (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# The loop


def make_accelerator(settings: TrainSettings):
    import logging

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Tied embeddings are stored once per checkpoint, and accelerate warns about it every time.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)

    # accelerate keeps one AcceleratorState per process: a second training stage in the same process
    # (`run`, the Python API) with another --mixed-precision must start from a fresh one. The
    # process group (PartialState) is kept.
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != settings.mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    # find_unused_parameters is set on this handler once the first batch has shown it (`train`).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Launched as several processes on a machine without GPUs, accelerate needs cpu=True to join
    # them with gloo; without it each process would silently train alone.
    accelerator = Accelerator(cpu=launched > 1 and not torch.cuda.is_available(),
                              mixed_precision=settings.mixed_precision,
                              gradient_accumulation_steps=settings.grad_accum, kwargs_handlers=[ddp])
    if accelerator.num_processes != launched:
        raise UserError(f"launched as {launched} processes, but accelerate set up {accelerator.num_processes}; "
                        "start several processes with 'accelerate launch' (or torchrun)")
    return accelerator


class StepBoundary:
    """Ctrl-C or SIGTERM while training: the step under way finishes and its checkpoint is saved,
    then `stop` goes on with the interruption, so that `--resume` continues from that step. A second
    signal interrupts at once. Only a single-process run waits (several processes would have to
    agree on the step), and only in the main thread, where signals arrive."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.pending: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StepBoundary":
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum, frame) -> None:
        if self.pending is not None:
            raise interruption(signum)
        self.pending = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", file=sys.stderr)

    def stop(self) -> None:
        """Go on with the interruption that arrived during the step (once its state is saved)."""
        if self.pending is not None:
            raise interruption(self.pending)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def train(settings: TrainSettings, run_config: dict, phase: TrainingPhase) -> TrainResult:
    """Run (or resume) training. `run_config` describes everything else that decides the result
    (models, data, losses); `phase.load(accelerator)` loads models and data once OUT is known to
    be writable."""
    settings.check()
    config = {"training": settings.result_config(), **run_config}
    inputs = input_fingerprints(run_config, skip=[settings.out])
    out = Path(settings.out)
    # A second run writing OUT at the same time refuses (main process only); taking the lock puts
    # back a run that an --overwrite killed midway was replacing, before OUT is looked at.
    hold_lock(out)
    try:
        resume_from = check_output(settings, config, inputs)
        return _train(settings, config, inputs, out, resume_from, phase)
    finally:
        release_lock(out)


def _train(settings: TrainSettings, config: dict, inputs: dict, out: Path, resume_from: Path | None,
           phase: TrainingPhase) -> TrainResult:
    from accelerate.utils import set_seed

    accelerator = make_accelerator(settings)
    world, main = accelerator.num_processes, accelerator.is_main_process
    # Every process has checked OUT before the main process creates (or clears) it.
    accelerator.wait_for_everyone()
    if settings.batch_size % (settings.grad_accum * world):
        raise UserError(f"--batch-size {settings.batch_size} cannot be cut into --grad-accum {settings.grad_accum} "
                        f"x {world} processes equal micro-batches; pass a multiple of {settings.grad_accum * world}")
    fresh = main and unstarted(out)
    try:
        phase.load(accelerator)  # may write OUT/cache/ (phase 1's token blocks)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise

    created = main and fresh  # a failure before a checkpoint removes it
    # --overwrite: the old run stays whole, aside, until the new one is complete (OUT/cache/ is keyed
    # by its inputs: still valid, and in use)
    replaced = set_aside(out, keep=[CACHE]) if main and settings.overwrite and not unstarted(out) else None
    try:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "run_config.json").is_file():
                record = {"hash": run_config_hash(config), "config": config, "inputs": inputs}
                replace_text(out / "run_config.json", json.dumps(record, indent=2) + "\n")
        accelerator.wait_for_everyone()
        if not main:  # several nodes: OUT must be on a filesystem every process sees
            wait_visible(out / "run_config.json", what="the run's configuration")

        set_seed(settings.seed)
        model = phase.model
        optimizer = torch.optim.AdamW(phase.parameter_groups(model, settings.weight_decay), lr=settings.lr)
        scheduler = phase.scheduler(optimizer, settings)
        if world > 1:
            first = next(my_micro_batches(phase.train_data.batch(0), accelerator, settings.grad_accum,
                                          phase.batch_counts))
            unused = unused_parameters(model.to(accelerator.device), phase.loss, first, accelerator)
            accelerator.ddp_handler.find_unused_parameters = bool(unused)
            if unused and main:
                shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
                print(f"note: the enabled losses give no gradient to {shown}; DDP looks for unused "
                      "parameters at every step", file=sys.stderr)
        model, optimizer = accelerator.prepare(model, optimizer)
        state = {"step": 0, "best_value": None, "best_step": None}
        if resume_from is not None:
            resume_from, saved = _load_checkpoint(accelerator, out, resume_from, scheduler, phase)
            state = {k: saved[k] for k in state}
            if main:
                _truncate_metrics(out, state["step"])
                print(f"resuming from {resume_from} (step {state['step']})", file=sys.stderr)

        data = phase.train_data
        # A bar on a terminal, a line every 30 s in a log file; only the main process shows progress.
        bar = progress(total=settings.steps, initial=state["step"], desc="train", unit="step",
                       show=settings.progress if main else False)
        sums, names, since_log, grad_norm = None, ["loss"], 0, None
        last_train, last_eval, started = {}, {}, time.perf_counter()
        model.train()
        with StepBoundary(enabled=world == 1) as boundary:
            while state["step"] < settings.steps:
                phase.before_step(state["step"], accelerator.unwrap_model(model), optimizer)
                for batch in my_micro_batches(data.batch(state["step"]), accelerator, settings.grad_accum,
                                              phase.batch_counts):
                    with accelerator.accumulate(model):
                        with accelerator.autocast():
                            loss, terms = phase.loss(model, batch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            phase.after_backward(accelerator.unwrap_model(model))
                            if settings.max_grad_norm:
                                grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    values = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
                    sums, names = (values if sums is None else sums + values), ["loss", *terms]
                scheduler.step()
                state["step"] += 1
                step = state["step"]
                since_log += 1
                bar.update(1)
                fields = phase.row_fields(step)

                if step % settings.log_every == 0 or step == settings.steps:
                    means = (accelerator.reduce(sums, "mean") / (since_log * settings.grad_accum)).tolist()
                    last_train = {"kind": "train", "step": step, **fields, **dict(zip(names, means)),
                                  "lr": scheduler.get_last_lr()[0],
                                  "grad_norm": None if grad_norm is None else float(grad_norm),
                                  "epoch": round(step / data.batches_per_epoch, 4),
                                  "elapsed_s": round(time.perf_counter() - started, 2)}
                    if main:
                        _append_metrics(out, last_train)
                    bar.set_postfix(loss=f"{means[0]:.4f}", refresh=False)
                    sums, since_log = None, 0

                if phase.evaluates and (step % settings.eval_every == 0 or step == settings.steps):
                    model.eval()
                    note(bar, f"step {step}: evaluating on dev")  # a log file hears from a long evaluation
                    evaluated = time.perf_counter()
                    metrics = phase.evaluate(model, accelerator)
                    note(bar, f"step {step}: {phase.best_metric} {metrics[phase.best_metric]:.4f} "
                              f"(evaluated in {time.perf_counter() - evaluated:.0f} s)")
                    model.train()
                    last_eval = {"kind": "eval", "step": step, **fields, **metrics}
                    value = metrics[phase.best_metric]
                    best = state["best_value"]
                    competes = step > phase.best_after
                    if competes and (best is None or (value > best if phase.higher_is_better else value < best)):
                        state["best_value"], state["best_step"] = value, step
                        if main:
                            with atomic_dir(out / "best", overwrite=True) as tmp:
                                phase.save(accelerator.unwrap_model(model), tmp)
                                (tmp / "best.json").write_text(json.dumps({"step": step, **metrics}, indent=2) + "\n",
                                                               encoding="utf-8")
                    if main:
                        _append_metrics(out, last_eval)
                    bar.set_postfix({"loss": f"{last_train.get('loss', float('nan')):.4f}", phase.best_metric: f"{value:.4f}"},
                                    refresh=False)
                    accelerator.wait_for_everyone()

                # interrupted: this step's checkpoint first (not under --overwrite: the old run comes back)
                stopping = boundary.pending is not None and replaced is None
                if step % settings.save_every == 0 or step == settings.steps or stopping:
                    trainer_state = {**state, "data_position": step,
                                     "scheduler": scheduler.state_dict(), "config_hash": run_config_hash(config)}
                    _save_checkpoint(accelerator, out, trainer_state, phase.extra_state(), settings.keep_checkpoints)
                if stopping and main:
                    print(f"saved {out / 'checkpoints' / f'step-{step}'}: continue with --resume", file=sys.stderr)
                boundary.stop()
        bar.close()
        if main:
            with atomic_dir(out / "final", overwrite=True) as tmp:
                phase.save(accelerator.unwrap_model(model), tmp)
    except BaseException:
        if replaced is not None:  # the old run comes back; the unfinished new one goes
            put_back(out, replaced, keep=[CACHE])
            print(f"note: {out} is the run it was before --overwrite: the new run did not finish", file=sys.stderr)
        elif created and not checkpoints(out):  # nothing worth keeping: a corrected rerun starts clean
            shutil.rmtree(out, ignore_errors=True)
        raise
    if replaced is not None:
        drop_aside(replaced)
    accelerator.wait_for_everyone()
    return TrainResult(step=state["step"], final_dir=out / "final", best_step=state["best_step"],
                       best_value=state["best_value"], last_train=last_train, last_eval=last_eval,
                       is_main_process=main)
