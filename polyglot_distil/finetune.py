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

import contextlib
import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyglot_distil.errors import UserError
from polyglot_distil.nli_data import LABELS, NLIData, read_nli

NLI_ID2LABEL = dict(enumerate(LABELS))


# ---------------------------------------------------------------------------------------------
# Data


def read_task_data(train: list[str], dev: list[str], max_train_examples: int | None, seed: int
                   ) -> tuple[NLIData, NLIData]:
    """The training and dev pairs of every source; with `max_train_examples`, a seeded sample of
    the training pairs (kept in source order)."""
    train_data = NLIData.concat([read_nli(s) for s in train])
    dev_data = NLIData.concat([read_nli(s) for s in dev])
    if max_train_examples is not None:
        if max_train_examples < 1:
            raise UserError(f"--max-train-examples must be at least 1, not {max_train_examples}")
        if max_train_examples < len(train_data):
            chosen = np.random.default_rng(seed).choice(len(train_data), max_train_examples, replace=False)
            train_data = train_data.select(np.sort(chosen))
    return train_data, dev_data


@dataclass
class EncodedPairs:
    """Tokenised (premise, hypothesis) pairs, flat: pair i is tokens offsets[i]:offsets[i+1]."""

    input_ids: np.ndarray  # int32[T]
    token_type_ids: np.ndarray | None  # int8[T], for tokenizers that have them (BERT)
    offsets: np.ndarray  # int64[N + 1]
    pad_id: int

    def __len__(self) -> int:
        return len(self.offsets) - 1


def encode_pairs(tokenizer, data: NLIData, max_length: int, progress: bool | None = None,
                 chunk: int = 4096) -> EncodedPairs:
    """Tokenise every pair once, truncated to `max_length` tokens (longest first), unpadded."""
    from tqdm.auto import tqdm

    if max_length < 8:
        raise UserError(f"--max-length must be at least 8 tokens, not {max_length}")
    with_types = "token_type_ids" in tokenizer.model_input_names
    ids, types, lengths = [], [], []
    for start in tqdm(range(0, len(data), chunk), desc="tokenize", unit=" chunks", file=sys.stderr,
                      dynamic_ncols=True, disable=None if progress is None else not progress):
        end = start + chunk
        encoded = tokenizer(data.premises[start:end], data.hypotheses[start:end], truncation=True,
                            max_length=max_length, padding=False, return_token_type_ids=with_types)
        for i, row in enumerate(encoded["input_ids"]):
            ids.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
            if with_types:
                types.append(np.asarray(encoded["token_type_ids"][i], dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedPairs(np.concatenate(ids), np.concatenate(types) if with_types else None, offsets, pad_id)


class NLIBatches:
    """Shuffled batches of labelled pairs, batch k a pure function of (seed, k): position
    k % batches_per_epoch of epoch k // batches_per_epoch (a new permutation each epoch; the
    last incomplete batch of an epoch is left out). Returns int64 tensors `input_ids`,
    `attention_mask` (and `token_type_ids`) [batch_size, L], padded to the longest pair of the
    batch, `labels` [batch_size] and `rows` [batch_size] (the pairs' indices in the data)."""

    def __init__(self, pairs: EncodedPairs, labels: np.ndarray, batch_size: int, seed: int = 0):
        if len(pairs) < batch_size:
            raise UserError(f"--batch-size {batch_size} is more than the {len(pairs)} training pairs; "
                            "give more data or a smaller --batch-size")
        self.pairs, self.labels, self.batch_size, self.seed = pairs, labels, batch_size, seed
        self.batches_per_epoch = len(pairs) // batch_size

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def batch(self, index: int) -> dict:
        import torch

        epoch, position = divmod(index, self.batches_per_epoch)
        rows = self._order(epoch)[position * self.batch_size:(position + 1) * self.batch_size]
        pairs, offsets = self.pairs, self.pairs.offsets
        width = int((offsets[rows + 1] - offsets[rows]).max())
        input_ids = np.full((len(rows), width), pairs.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            start, end = offsets[row], offsets[row + 1]
            input_ids[i, :end - start] = pairs.input_ids[start:end]
            attention[i, :end - start] = 1
            if pairs.token_type_ids is not None:
                types[i, :end - start] = pairs.token_type_ids[start:end]
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
                 "labels": torch.from_numpy(self.labels[rows].astype(np.int64)), "rows": torch.from_numpy(rows)}
        if pairs.token_type_ids is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        return batch


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that the model's forward takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def steps_for(epochs: float, batches_per_epoch: int, option: str) -> int:
    """Optimizer steps of `epochs` (fractions allowed) epochs, at least 1."""
    if not epochs > 0:
        raise UserError(f"{option} must be positive, not {epochs}")
    return max(1, math.ceil(round(epochs * batches_per_epoch, 6)))  # round: 0.1 x 30 is 3.0000000000000004


# ---------------------------------------------------------------------------------------------
# Model


@contextlib.contextmanager
def quiet_load_report():
    """transformers logs a table of the weights a classifier built on a masked-LM checkpoint
    drops (its MLM head) and adds (the new head): both intended here. (With that logger above
    WARNING, transformers 5 also checks a tensor-parallel plan, and warns about it: silenced too.)"""
    import logging

    loggers = [logging.getLogger(f"transformers.{name}") for name in ("modeling_utils", "distributed.tensor_parallel")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def new_classifier(base: str, seed: int, trust_remote_code: bool = False, config=None, **kwargs):
    """A 3-way NLI classifier (classes in XNLI order) on the body of checkpoint `base`: the head,
    and whatever else `base` lacks (BERT's pooler after a masked-LM checkpoint), is new,
    initialised from `seed`. With `config`, that configuration instead. Returns (model, the
    names of the new parameters)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from polyglot_distil.loading import load_model

    if config is None:
        kwargs.update(id2label=NLI_ID2LABEL, label2id={v: k for k, v in NLI_ID2LABEL.items()})
    else:
        kwargs["config"] = config
    with quiet_load_report(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, loading = load_model(base, AutoModelForSequenceClassification, trust_remote_code=trust_remote_code,
                                    output_loading_info=True, **kwargs)
    return model, set(loading["missing_keys"])


def is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or [])


def load_for_finetuning(name: str, seed: int, trust_remote_code: bool = False, attn_implementation: str = "sdpa"):
    """(classifier, tokenizer, to_xnli, note). A 3-way NLI classifier keeps its head and class
    order (`to_xnli[c]`: the XNLI label of class c); any other checkpoint (masked-LM, bare
    encoder, another task's head) gets a new 3-way head. A classification head with other
    labels is an error (`evaluate.load_classifier`): its classes have no NLI meaning."""
    from transformers import AutoConfig

    from polyglot_distil.evaluate import load_classifier
    from polyglot_distil.loading import load_model, load_tokenizer

    config = load_model(name, AutoConfig, trust_remote_code=trust_remote_code)
    if is_sequence_classifier(config):
        classifier = load_classifier(name, attn_implementation=attn_implementation,
                                     trust_remote_code=trust_remote_code)
        config = classifier.model.config  # generic LABEL_0..2 names become the NLI names they were taken for
        config.id2label = {c: LABELS[label] for c, label in enumerate(classifier.to_xnli)}
        config.label2id = {name: c for c, name in config.id2label.items()}
        return classifier.model, classifier.tokenizer, classifier.to_xnli, classifier.note
    model, _ = new_classifier(name, seed, trust_remote_code, attn_implementation=attn_implementation)
    return model, load_tokenizer(name, trust_remote_code), list(range(len(LABELS))), None


def dev_predictions(model, tokenizer, dev: NLIData, to_xnli: list[int], batch_size: int, max_length: int) -> np.ndarray:
    """int64[N]: the XNLI label id the model predicts for each dev pair."""
    from polyglot_distil.evaluate import predict_logits

    logits = predict_logits(model, tokenizer, dev.premises, dev.hypotheses, batch_size, max_length, progress=False)
    return np.asarray(to_xnli)[logits.argmax(-1)]


def save_classifier(model, folder: Path, tokenizer_source: str, tokenizer, info: dict) -> None:
    """A model folder any `AutoModelForSequenceClassification` user loads: weights, config, the
    tokenizer, and `info` as training.json."""
    from polyglot_distil.student import copy_tokenizer

    model.save_pretrained(folder)
    copy_tokenizer(tokenizer_source, folder, tokenizer)
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def build_recipe(args, train_data: NLIData, dev_data: NLIData, accelerator):
    import torch.nn.functional as F

    from polyglot_distil.training import Recipe

    show = False if args.no_progress or not accelerator.is_main_process else None
    model, tokenizer, to_xnli, note = load_for_finetuning(args.model, args.seed, args.trust_remote_code)
    if note and accelerator.is_main_process:
        print(f"note: {note}", file=sys.stderr)
    class_of = np.argsort(to_xnli)  # the model's output class for each XNLI label
    pairs = encode_pairs(tokenizer, train_data, args.max_length, show)
    data = NLIBatches(pairs, class_of[train_data.labels], args.batch_size, args.seed)

    def compute_loss(model, batch):
        logits = model(**model_inputs(batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"]), {}

    def evaluate(model, accelerator):
        predicted = dev_predictions(accelerator.unwrap_model(model), tokenizer, dev_data, to_xnli,
                                    args.batch_size, args.max_length)
        return {"dev_accuracy": float(np.mean(predicted == dev_data.labels))}

    def save_model(trained, folder: Path) -> None:
        save_classifier(trained, folder, args.model, tokenizer,
                        {"command": "finetune", "model": str(args.model), "task": args.task,
                         "train": args.train, "dev": args.dev, "train_pairs": len(train_data)})

    return Recipe(model=model, train_data=data, compute_loss=compute_loss, save_model=save_model,
                  evaluate=evaluate, best_metric="dev_accuracy", higher_is_better=True)


# ---------------------------------------------------------------------------------------------
# Command line


def add_task_arguments(parser) -> None:
    """The task data options, shared with `distil task`."""
    parser.add_argument("--task", choices=("nli",), default="nli", help="the task (NLI: 3-way classification)")
    parser.add_argument("--train", action="append", required=True, metavar="SOURCE",
                        help="English training pairs: TSV/JSONL file or hf:NAME?split=train (repeatable)")
    parser.add_argument("--dev", action="append", required=True, metavar="SOURCE",
                        help="English dev pairs, for the best model (repeatable)")
    parser.add_argument("--max-train-examples", type=int, help="train on a seeded sample of this many pairs")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per pair, truncated longest first")


def add_training_arguments(group, lr: float, batch_size: int) -> None:
    """The optimisation and bookkeeping options, shared with `distil task`."""
    group.add_argument("--lr", type=float, default=lr)
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help="pairs per optimizer step, all processes together")
    group.add_argument("--grad-accum", type=int, default=1, help="cut each batch into this many micro-batches")
    group.add_argument("--warmup-steps", type=int, default=0)
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    group.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    group.add_argument("--eval-every", type=int, help="steps between dev evaluations (default: once an epoch)")
    group.add_argument("--save-every", type=int, help="steps between checkpoints (default: --eval-every, "
                                                       "at most 1000)")
    group.add_argument("--keep-checkpoints", type=int, default=2)
    group.add_argument("--log-every", type=int, default=50, help="steps between rows of metrics.jsonl")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    group.add_argument("--overwrite", action="store_true", help="delete an existing --out and start over")


def training_settings(args, steps: int, batches_per_epoch: int, weight_decay: float = 0.0):
    """`TrainSettings` from the shared options; evaluations default to once an epoch."""
    from polyglot_distil.training import TrainSettings

    eval_every = args.eval_every or min(batches_per_epoch, steps)
    return TrainSettings(
        out=args.out, steps=steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=weight_decay, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm or None,
        mixed_precision=args.mixed_precision, seed=args.seed, eval_every=eval_every,
        save_every=args.save_every or min(eval_every, 1000), log_every=args.log_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume, overwrite=args.overwrite, progress=False if args.no_progress else None)


def add_finetune_parser(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a model on English NLI (the task teacher)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="hub name or model folder (masked-LM, bare or NLI classifier)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, best/ and final/ models)")
    add_task_arguments(p)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=3.0, help="passes over the training pairs (fractions allowed)")
    add_training_arguments(g, lr=2e-5, batch_size=32)
    g.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run")
    p.set_defaults(func=run_finetune)


def epoch_batches(pairs: int, batch_size: int) -> int:
    """Whole batches in an epoch of `pairs` training pairs (the remainder is left to later epochs)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    if pairs < batch_size:
        raise UserError(f"--batch-size {batch_size} is more than the {pairs} training pairs; "
                        "give more data or a smaller --batch-size")
    return pairs // batch_size


def run_finetune(args) -> int:
    from polyglot_distil.training import train

    train_data, dev_data = read_task_data(args.train, args.dev, args.max_train_examples, args.seed)
    batches_per_epoch = epoch_batches(len(train_data), args.batch_size)
    steps = steps_for(args.epochs, batches_per_epoch, "--epochs")
    settings = training_settings(args, steps, batches_per_epoch, args.weight_decay)
    run_config = {"phase": "finetune", "model": str(args.model), "task": args.task, "train": args.train,
                  "dev": args.dev, "max_train_examples": args.max_train_examples, "max_length": args.max_length,
                  "epochs": args.epochs}
    result = train(settings, run_config, lambda accelerator: build_recipe(args, train_data, dev_data, accelerator))
    if result.is_main_process:
        print(f"step {result.step} ({args.epochs:g} epochs of {len(train_data):,} pairs): best dev accuracy "
              f"{result.best_value:.4f} at step {result.best_step}")
        print(f"wrote {Path(args.out) / 'best'} and {result.final_dir}")
    return 0
