"""What a training phase plugs into the one training loop (training.py): a `TrainingPhase`
subclass per phase, in the phase's own file, whose methods read in the order the loop calls them.

    class MyPhase(TrainingPhase):
        def load(self, accelerator): ...        # models and data: self.model, self.train_data
        def loss(self, model, batch): ...       # the step: forward, (loss, {term: tensor}) logged
        def evaluate(self, model, accelerator): ...   # {metric: float}, when self.evaluates
        def save(self, model, folder): ...      # a model folder: OUT/best/, OUT/final/
    result = training.train(settings, run_config, MyPhase(...))

This module imports neither torch nor transformers (the stage modules that subclass it are
imported when the command line is built).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class BatchSource(Protocol):
    """Global batches as a pure function of their number: batch(k) is position
    k % batches_per_epoch of epoch k // batches_per_epoch. Tensors have the batch's rows first."""

    batches_per_epoch: int

    def batch(self, index: int) -> dict[str, Any]: ...


def default_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights (1-d)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class TrainingPhase:
    """What a phase plugs into the loop; a subclass per phase, read top to bottom: `load`, the
    step (`loss`, and the hooks around it), `evaluate`, `save`.

    `load(accelerator)` loads models and data, once OUT is known to be writable, and sets
    `model` (the trained module) and `train_data` (its batches). `loss(model, batch)` ->
    (loss, {term: tensor}) gets the prepared module and this process's rows on the device, and
    must run the trained computation through `model(...)` (DDP averages gradients only for work
    done in the wrapped module's forward; see `Trainable`); the terms are logged. `evaluate(model,
    accelerator)` -> {metric: float}, the same on every process, runs when `evaluates`;
    `best_metric` (lower is better unless `higher_is_better`) picks OUT/best/, among the
    evaluations after step `best_after`. `save(model, folder)` writes a model folder (best/,
    final/) from the unwrapped module.

    The defaults below do nothing or the usual; a run in stages overrides them:
    `before_step(k, model, optimizer)` runs before step k (0-based; also the first step after a
    resume) with the unwrapped module and the optimizer, to change what is trained mid-run (e.g.
    reset the weights and clear `optimizer.state`, a fresh optimizer); `after_backward(model)`
    sees the unwrapped module with this step's averaged gradients, before clipping and the
    optimizer step; `scheduler(optimizer, settings)` is the learning-rate schedule;
    `row_fields(step)` adds fields to the metrics rows of `step` (1-based, as logged);
    `extra_state()` / `load_extra_state(tensors)` round-trip tensors through checkpoints.

    `batch_counts(global batch)` -> {name: count} or None counts what the loss averages over
    (tokens, masked tokens, ...) on the whole global batch; each micro-batch gets them divided by
    the number of micro-batches, as batch["counts"], so that the micro-batches' losses average to
    the global batch's mean whatever the processes and accumulation steps.
    """

    best_metric: str = "eval_loss"
    higher_is_better: bool = False
    best_after: int = 0
    evaluates: bool = False
    model: torch.nn.Module
    train_data: BatchSource

    def load(self, accelerator) -> None:
        raise NotImplementedError

    def batch_counts(self, batch: dict) -> dict[str, float] | None:
        return None

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def before_step(self, step: int, model, optimizer) -> None:
        pass

    def after_backward(self, model) -> None:
        pass

    def parameter_groups(self, model, weight_decay: float) -> list[dict]:
        return default_parameter_groups(model, weight_decay)

    def scheduler(self, optimizer, settings):
        """Linear warmup over `warmup_steps`, then linear decay to 0 over the run."""
        from transformers import get_linear_schedule_with_warmup

        return get_linear_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)

    def row_fields(self, step: int) -> dict:
        return {}

    def evaluate(self, model, accelerator) -> dict[str, float]:
        raise NotImplementedError

    def save(self, model, folder: Path) -> None:
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass
