"""Fine-tune a model on English NLI: the task teacher of phase 2 (BiStil's MultiNLI teacher).

    polyglot-distil finetune --model bert-base-multilingual-cased --task nli \
        --train 'hf:nyu-mll/multi_nli?split=train' --dev 'hf:nyu-mll/multi_nli?split=validation_matched' \
        --out out/teacher-nli
    polyglot-distil finetune --model out/trimmed --task nli --train corpora/nli/train-en.tsv \
        --dev corpora/nli/dev-en.tsv --epochs 2 --lr 5e-4 --batch-size 16 --out out/teacher-nli
    accelerate launch --multi_gpu --num_processes 4 -m polyglot_distil finetune ...   # 4 GPUs
    polyglot-distil finetune ... --out out/teacher-nli --resume                         # continue

`--model` is a masked-LM or bare checkpoint (it gets a new, seeded 3-way classification head) or
a 3-way NLI classifier (its head and class order are kept). Data: NLI sources as `nli_data`
reads them (TSV/JSONL premise, hypothesis, label; `hf:NAME?split=...`). Loss: cross-entropy on
the gold labels; the best model is the one with the highest English dev accuracy.

Output (the training loop's, see training.py): OUT/best/ and OUT/final/, sequence-classification
model folders with the tokenizer and `config.id2label` = entailment, neutral, contradiction;
OUT/metrics.jsonl (`dev_accuracy` per evaluation), OUT/checkpoints/, OUT/run_config.json.

The batches (`NLIBatches`) and the dev accuracy here are those `distil task` trains on too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyglot_distil.data.nli import NLIData
from polyglot_distil.data.nli_batches import NLIBatches, TaskData, cached_pairs, epoch_batches, model_inputs, \
    read_task_data
from polyglot_distil.distill.phase import TrainingPhase
from polyglot_distil.distill.settings import REDUCE_VOCAB, SAVE_DTYPE, TRAINING, Checkpointing, steps_for
from polyglot_distil.models.classifier import dev_predictions, load_for_finetuning, save_classifier
from polyglot_distil.options import NO_PROGRESS, READS, TRUST_REMOTE_CODE, WRITES, like, setting


@dataclass(kw_only=True)
class FinetuneSettings(Checkpointing, TaskData):
    """`finetune`'s settings (the command line's options, a `run` config's `finetune:` section)."""

    model: str = setting(role=READS, help="hub name or model folder (masked-LM, bare or NLI classifier)")
    out: str = setting(role=WRITES, help="output folder (checkpoints, metrics, best/ and final/ models)")
    lr: float = setting(2e-5, group=TRAINING)
    batch_size: int = setting(32, group=TRAINING, help="pairs per optimizer step, all processes together")
    save_dtype: str | None = like(SAVE_DTYPE, group=TRAINING)
    epochs: float = setting(3.0, group=TRAINING, help="passes over the training pairs (fractions allowed)")
    weight_decay: float = setting(0.0, group=TRAINING)
    reduce_vocab: bool = like(REDUCE_VOCAB, advanced=True)
    no_progress: bool = like(NO_PROGRESS)
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)


class FinetunePhase(TrainingPhase):
    """The task teacher on the training loop: cross-entropy on the gold labels; the highest English
    dev accuracy picks OUT/best/."""

    best_metric, higher_is_better, evaluates = "dev_accuracy", True, True

    def __init__(self, options: FinetuneSettings, train_data: NLIData, dev_data: NLIData):
        self.options, self.train_pairs, self.dev_data = options, train_data, dev_data

    def load(self, accelerator) -> None:
        """The model (a new head, or its own), its class order, and the pairs' batches."""
        import torch
        from transformers import AutoConfig

        from polyglot_distil.distill.training import CACHE
        from polyglot_distil.models.loading import load_model, saved_dtype
        from polyglot_distil.models.used_vocab import restrict_to_pairs

        options = self.options
        show = False if options.no_progress or not accelerator.is_main_process else None
        # float32 weights whatever the checkpoint's dtype: bf16/fp16 only through --mixed-precision's autocast
        self.model, self.tokenizer, self.to_xnli, note = load_for_finetuning(options.model, options.seed,
                                                                             options.trust_remote_code,
                                                                             dtype=torch.float32)
        self.save_dtype = options.save_dtype or saved_dtype(load_model(options.model, AutoConfig,
                                                                       trust_remote_code=options.trust_remote_code))
        if note and accelerator.is_main_process:
            print(f"note: {note}", file=sys.stderr)
        class_of = np.argsort(self.to_xnli)  # the model's output class for each XNLI label
        pairs = cached_pairs(self.tokenizer, self.train_pairs, options.max_length, show, Path(options.out) / CACHE,
                             main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone)
        self.train_data = NLIBatches(pairs, class_of[self.train_pairs.labels], options.batch_size, options.seed,
                                     options.length_buckets)
        if options.reduce_vocab:
            _, _, note = restrict_to_pairs(self.model, pairs)
            if accelerator.is_main_process:
                print(note, file=sys.stderr, flush=True)

    def loss(self, model, batch: dict):
        """Cross-entropy of the model's logits against the gold labels (no terms to log beside it)."""
        import torch.nn.functional as F

        logits = model(**model_inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"]), {}

    def evaluate(self, model, accelerator) -> dict[str, float]:
        predicted = dev_predictions(accelerator.unwrap_model(model), self.tokenizer, self.dev_data, self.to_xnli,
                                    self.options.batch_size, self.options.max_length, accelerator)
        return {"dev_accuracy": float(np.mean(predicted == self.dev_data.labels))}

    def save(self, trained, folder: Path) -> None:
        options = self.options
        save_classifier(trained, folder, options.model, self.tokenizer,
                        {"command": "finetune", "model": str(options.model), "task": options.task,
                         "train": options.train, "dev": options.dev, "train_pairs": len(self.train_pairs)},
                        self.save_dtype)


# ---------------------------------------------------------------------------------------------
# Command line


def run_finetune(options: FinetuneSettings) -> dict:
    """The `finetune` stage: train the task teacher; returns the run's summary."""
    from polyglot_distil.distill.training import train

    train_data, dev_data = read_task_data(options.train, options.dev, options.max_train_pairs, options.seed)
    batches_per_epoch = epoch_batches(len(train_data), options.batch_size)
    steps = steps_for(options.epochs, batches_per_epoch, "--epochs")
    settings = options.checkpointed_settings(options.out, steps, batches_per_epoch, options.weight_decay,
                                            options.no_progress)
    run_config = {"phase": "finetune", "model": str(options.model), "task": options.task, "train": options.train,
                  "dev": options.dev, "max_train_examples": options.max_train_pairs, "max_length": options.max_length,
                  "length_buckets": options.length_buckets,
                  "epochs": options.epochs, **({"save_dtype": options.save_dtype} if options.save_dtype else {}),
                  **({"reduce_vocab": True} if options.reduce_vocab else {})}
    result = train(settings, run_config, FinetunePhase(options, train_data, dev_data))
    if not result.is_main_process:
        return result.summary()
    return {**result.summary(), "lines": [
        f"step {result.step} ({options.epochs:g} epochs of {len(train_data):,} pairs): best dev accuracy "
        f"{result.best_value:.4f} at step {result.best_step}", f"wrote {Path(options.out) / 'best'} and {result.final_dir}"]}
