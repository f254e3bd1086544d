"""The options every training stage shares (declared once, as the settings dataclasses `Optimisation`
and `Checkpointing` that the stages' settings inherit) and the one builder of `TrainSettings` from
them. Torch-free, so that building the command line stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from polyglot_distil.errors import UserError
from polyglot_distil.models.loading import SAVE_DTYPES
from polyglot_distil.options import FLAG, OVERWRITE, SEED, Option, like, setting


def steps_for(epochs: float, batches_per_epoch: int, option: str) -> int:
    """Optimizer steps of `epochs` (fractions allowed) epochs, at least 1."""
    if not epochs > 0:
        raise UserError(f"{option} must be positive, not {epochs}")
    return max(1, math.ceil(round(epochs * batches_per_epoch, 6)))  # round: 0.1 x 30 is 3.0000000000000004


MIXED_PRECISION = Option("mixed_precision", choices=("no", "bf16", "fp16"), default="no",
                         help="autocast the forward to this precision (the weights stay float32)")
SAVE_DTYPE = Option("save_dtype", choices=SAVE_DTYPES,
                    help="dtype of the saved models (default: that of the model training starts from; "
                         "training itself keeps float32 weights)")
RESUME = Option("resume", kind=FLAG, help="continue from the newest checkpoint in --out")
REDUCE_VOCAB = Option("reduce_vocab", kind=FLAG,
                      help="train only the embedding rows of the tokens the training pairs use (the gradient and "
                           "AdamW's moments cover those rows; far faster on a multilingual model) and save the full "
                           "vocabulary; with weight decay 0 (finetune's default; distil task and QAT have none) the "
                           "result equals full training's, and with decay the unused rows keep their values")


TRAINING = "training"


@dataclass(kw_only=True)
class Optimisation:
    """How every training stage optimises (a stage's settings inherit it and may change a default)."""

    batch_size: int = setting(8, group=TRAINING, help="examples per optimizer step, all processes together")
    grad_accum: int = setting(1, advanced=True, group=TRAINING,
                              help="cut each batch into this many micro-batches (less memory, same result)")
    lr: float = setting(1e-4, group=TRAINING)
    warmup_steps: int = setting(0, group=TRAINING)
    max_grad_norm: float = setting(1.0, group=TRAINING, help="gradient clipping (0: none)")
    mixed_precision: str = like(MIXED_PRECISION, advanced=True, group=TRAINING)
    log_every: int = setting(50, advanced=True, group=TRAINING, help="steps between rows of metrics.jsonl")
    seed: int = like(SEED, group=TRAINING)

    def train_settings(self, out, steps: int, *, eval_every: int, save_every: int, keep_checkpoints: int = 2,
                       resume: bool = False, overwrite: bool = False, weight_decay: float = 0.0,
                       no_progress: bool = False):
        """The one builder of a run's `TrainSettings`: these options, and what the stage decides."""
        from polyglot_distil.distill.training import TrainSettings

        return TrainSettings(
            out=out, steps=steps, batch_size=self.batch_size, grad_accum=self.grad_accum, lr=self.lr,
            weight_decay=weight_decay, warmup_steps=self.warmup_steps, max_grad_norm=self.max_grad_norm or None,
            mixed_precision=self.mixed_precision, seed=self.seed, eval_every=eval_every, save_every=save_every,
            log_every=self.log_every, keep_checkpoints=keep_checkpoints, resume=resume, overwrite=overwrite,
            progress=False if no_progress else None)

    def check_options(self) -> None:
        """The checks of these options alone, which need no file: `run` makes them of every stage
        before the first one runs (the stage makes them again when it starts)."""
        self.train_settings("", 1, eval_every=1, save_every=1).check()


@dataclass(kw_only=True)
class Checkpointing(Optimisation):
    """What a training stage that keeps checkpoints and a best model adds (all but `distil search-map`)."""

    eval_every: int | None = setting(None, group=TRAINING,
                                     help="steps between dev evaluations (default: once an epoch)")
    save_every: int | None = setting(None, advanced=True, group=TRAINING,
                                     help="steps between checkpoints (default: --eval-every, at most 1000)")
    keep_checkpoints: int = setting(2, advanced=True, group=TRAINING)
    resume: bool = like(RESUME, group=TRAINING)
    overwrite: bool = like(OVERWRITE, group=TRAINING, help="delete an existing --out and start over")

    def checkpointed_settings(self, out, steps: int, batches_per_epoch: int, weight_decay: float = 0.0,
                              no_progress: bool = False):
        """`train_settings` with evaluations once an epoch unless --eval-every says otherwise, and a
        checkpoint at each evaluation (at most every 1000 steps) unless --save-every does."""
        eval_every = self.eval_every or min(batches_per_epoch, steps)
        return self.train_settings(out, steps, eval_every=eval_every, save_every=self.save_every or min(eval_every, 1000),
                                   keep_checkpoints=self.keep_checkpoints, resume=self.resume, overwrite=self.overwrite,
                                   weight_decay=weight_decay, no_progress=no_progress)

    def check_options(self) -> None:
        self.train_settings("", 1, eval_every=self.eval_every or 1, save_every=self.save_every or 1,
                            keep_checkpoints=self.keep_checkpoints).check()
