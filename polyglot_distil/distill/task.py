"""Phase 2: task-specific sparse distillation from a task-tuned teacher (BiStil).

    polyglot-distil distil task --teacher out/teacher-nli/best --student out/phase1/final --task nli \
        --train 'hf:nyu-mll/multi_nli?split=train' --dev 'hf:nyu-mll/multi_nli?split=validation_matched' \
        --out out/task
    polyglot-distil distil task ... --full-epochs 1 --sparse-epochs 1 --density 0.08 --exclude-embeddings
    accelerate launch --multi_gpu --num_processes 4 -m polyglot_distil distil task ...   # 4 GPUs
    polyglot-distil distil task ... --out out/task --resume                            # continue
    polyglot-distil apply-diff --student out/phase1/final --diff out/task/sparse_diff --out out/task-dense

The teacher is a 3-way NLI classifier (`polyglot-distil finetune`); the student, a phase-1 model
folder (masked-LM), gets a new 3-way head (seeded), in XNLI order. The pair (the teacher reduced
to the student's vocabulary, the layer map), the dev evaluation and the loss (BiStil's logits,
hidden and attention terms, weight 1 each; a gold-label term, weight 0) are the classifier
distillation that QAT shares: `classifier_distillation.py`.

Lottery-ticket sparse fine-tuning (`sparse.py`), one run of the training loop in two stages:
(1) --full-epochs of full fine-tuning (weight decay 0); (2) at the switch, the K = --density x
(selectable body parameters: LayerNorm excluded and frozen, embeddings included unless
--exclude-embeddings) entries that moved most from theta0 form the mask, every parameter (the
head included) returns to theta0, the optimizer starts afresh (its state cleared, the learning
rate schedule restarted), and --sparse-epochs train only the mask and the head. theta0 and the
mask are in every checkpoint, so a run interrupted in either stage resumes to the same result.

Output: OUT/best/ (the dense model with the best English dev accuracy in stage 2: the one to
use), OUT/final/, OUT/sparse_diff/ (the best model as a sparse difference from the phase-1
student, see sparse.py), OUT/metrics.jsonl (rows with `stage`: full or sparse; evaluations give
`dev_accuracy` and `dev_agreement`, the share of dev pairs where student and teacher agree),
OUT/checkpoints/, OUT/run_config.json.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import ClassVar
from pathlib import Path

from polyglot_distil.data.nli_batches import TaskData
from polyglot_distil.distill.classifier_distillation import TERMS, ClassifierLoss, DevEvaluation, TaskLossWeights, \
    attention_implementation, pair_with_teacher, weights_of
from polyglot_distil.distill.objective import batch_counts
from polyglot_distil.distill.phase import TrainingPhase
from polyglot_distil.distill.general import LAYER_MAP
from polyglot_distil.distill.settings import REDUCE_VOCAB, SAVE_DTYPE, TRAINING, Checkpointing
from polyglot_distil.errors import UserError
from polyglot_distil.options import NEGATED, NO_PROGRESS, READS, TRUST_REMOTE_CODE, WRITES, like, setting

SPARSE, LOSSES = "lottery-ticket sparse fine-tuning", "losses"


@dataclass(kw_only=True)
class TaskSettings(Checkpointing, TaskData):
    """`distil task`'s settings (the command line's options, a `run` config's `task:` section)."""

    GROUP_TITLES: ClassVar[dict] = {TRAINING: "training (each stage: a fresh AdamW, weight decay 0, its own linear "
                                              "schedule)"}

    teacher: str = setting(role=READS, help="3-way NLI classifier folder (from 'polyglot-distil finetune')")
    student: str = setting(role=READS, help="phase-1 student folder (e.g. the final/ of 'distil general')")
    out: str = setting(role=WRITES, help="output folder (best/, final/, sparse_diff/, checkpoints, metrics)")
    full_epochs: float = setting(5.0, group=SPARSE, help="stage 1: full fine-tuning (fractions allowed)")
    sparse_epochs: float = setting(5.0, group=SPARSE, help="stage 2: training the mask only")
    density: float = setting(0.08, group=SPARSE, help="K as a share of the selectable body parameters")
    sparse_params: int | None = setting(None, group=SPARSE, help="K as a number of parameters (overrides --density)")
    include_embeddings: bool = setting(True, kind=NEGATED, flag="--exclude-embeddings", group=SPARSE,
                                       help="freeze the embeddings and choose from the layers only (default: the "
                                            "embeddings may be chosen, as in BiStil's code)")
    temperature: float = setting(2.0, group=LOSSES, help="softmax temperature of the logit loss")
    logits_weight: float = setting(1.0, group=LOSSES)
    hidden_weight: float = setting(1.0, group=LOSSES)
    attention_weight: float = setting(1.0, group=LOSSES)
    label_weight: float = setting(0.0, group=LOSSES, help="gold-label cross-entropy (BiStil: 0)")
    layer_map: str | None = like(LAYER_MAP, group=LOSSES)
    teacher_cache: str | None = setting(None, advanced=True, metavar="DIR", group=LOSSES,
                                        help="compute the teacher's outputs once per training pair and keep them in "
                                             "DIR (float16, memory-mapped), for every epoch, both stages, a resumed "
                                             "run and other students of the same teacher and data; rebuilt when the "
                                             "teacher or the data change")
    lr: float = setting(2e-5, group=TRAINING)
    batch_size: int = setting(32, group=TRAINING, help="pairs per optimizer step, all processes together")
    save_dtype: str | None = like(SAVE_DTYPE, group=TRAINING)
    reduce_vocab: bool = like(REDUCE_VOCAB, advanced=True)
    no_progress: bool = like(NO_PROGRESS)
    trust_remote_code: bool = like(TRUST_REMOTE_CODE, help="allow the models' own code to run")

    def loss_weights(self) -> TaskLossWeights:
        return weights_of(self, TaskLossWeights())


@dataclass
class Stages:
    """Step counts of the two stages; steps [0, full) are stage 1, [full, full + sparse) stage 2."""

    full: int
    sparse: int
    warmup: int = 0

    def name(self, step: int) -> str:
        """The stage of logged step `step` (1-based: the step-th step done)."""
        return "full" if step <= self.full else "sparse"

    def lr_multiplier(self, k: int) -> float:
        """Step k (0-based): linear warmup then linear decay to 0, restarted for each stage."""
        i, length = (k, self.full) if k < self.full else (k - self.full, self.sparse)
        if i < self.warmup:
            return i / max(1, self.warmup)
        return max(0.0, (length - i) / max(1, length - self.warmup))


# ---------------------------------------------------------------------------------------------
# The student


def load_student(student_path: str, seed: int, attn: str, trust_remote_code: bool = False):
    """(classifier on the phase-1 student with a new seeded head, in float32; names of the new
    parameters; the dtype the student was saved in)."""
    import torch
    from transformers import AutoConfig

    from polyglot_distil.models.classifier import is_sequence_classifier, new_classifier
    from polyglot_distil.models.loading import load_model, saved_dtype

    config = load_model(student_path, AutoConfig, trust_remote_code=trust_remote_code)
    if is_sequence_classifier(config):
        raise UserError(f"--student {student_path} is already a sequence classifier; pass the phase-1 student "
                        "(e.g. the final/ folder of 'distil general'), which gets a new 3-way head")
    model, new_names = new_classifier(student_path, seed, trust_remote_code, attn_implementation=attn,
                                      dtype=torch.float32)
    return model, new_names, saved_dtype(config)


# ---------------------------------------------------------------------------------------------
# The phase


class TaskPhase(TrainingPhase):
    """Phase 2 on the training loop: the two stages of lottery-ticket sparse fine-tuning against a
    task teacher. After the run `ticket` (theta0 and the mask) and `diff_record` (what the sparse
    diff records) are what `run_distil_task` writes the sparse diff from."""

    best_metric, higher_is_better, evaluates = "dev_accuracy", True, True

    def __init__(self, options: TaskSettings, weights: TaskLossWeights, stages: Stages, train_data, dev_data):
        self.options, self.weights, self.stages = options, weights, stages
        self.train_pairs, self.dev_data = train_data, dev_data
        self.best_after = stages.full  # best/ is chosen among the sparse stage's evaluations

    def load(self, accelerator) -> None:
        """The pair, which parameters train (LT-SFT's groups, K, the ticket), the batches, the
        teacher's outputs (computed, or read from --teacher-cache) and the dev evaluation."""
        options, weights, main = self.options, self.weights, accelerator.is_main_process
        pair, new_names = self._load_pair()
        self.model = pair.student
        groups, k, selectable = self._choose_trainable(new_names)
        pairs = self._load_batches(pair, accelerator)
        pair.teacher_to(accelerator.device)
        self.dev_evaluation = DevEvaluation(pair, self.dev_data, options.batch_size, options.max_length, accelerator)
        self.distillation = ClassifierLoss(pair, weights, accelerator.device, self._teacher_cache(pair, pairs,
                                                                                                  accelerator))
        if main:
            total = sum(p.numel() for p in self.model.parameters())
            print(f"student: {total:,} parameters; K = {k:,} of {selectable:,} selectable ({k / selectable:.2%}); "
                  f"head {', '.join(groups.head)}", file=sys.stderr)
            if pair.teacher.note:
                print(f"note: {pair.teacher.note}", file=sys.stderr)
        self.info = {"command": "distil task", "teacher": str(options.teacher), "student": str(options.student),
                     "task": options.task, "train": options.train, "dev": options.dev,
                     "train_pairs": len(self.train_pairs), "weights": asdict(weights), "layer_map": pair.layer_map,
                     "density": options.density, "k": k, "include_embeddings": options.include_embeddings,
                     "stage_steps": {"full": self.stages.full, "sparse": self.stages.sparse}}
        self.diff_record = {**self.info, "base": str(options.student), "base_fingerprint": self.fingerprint}

    def _load_pair(self):
        """(the pair, the student's new head's parameter names): a new head on the phase-1 student
        (XNLI order) and the teacher on its vocabulary."""
        from polyglot_distil.models.loading import check_tokenizer_fits, load_tokenizer

        options = self.options
        self.tokenizer = load_tokenizer(options.student, options.trust_remote_code)
        student, new_names, self.student_dtype = load_student(options.student, options.seed,
                                                              attention_implementation(self.weights),
                                                              options.trust_remote_code)
        check_tokenizer_fits(student, self.tokenizer, options.student)
        pair = pair_with_teacher(options.teacher, student, options.student, self.tokenizer, list(range(3)),
                                 self.weights, options.layer_map, options.trust_remote_code)
        return pair, new_names

    def _choose_trainable(self, new_names: list[str]) -> tuple:
        """(groups, K, selectable count): LT-SFT's parameter groups (the frozen ones frozen here),
        K, the ticket, and the fingerprint of the body the sparse diff applies to."""
        from polyglot_distil.distill.sparse import LotteryTicket, parameter_groups, sparse_count
        from polyglot_distil.fingerprints import body_fingerprint

        options, student = self.options, self.model
        groups = parameter_groups(student, new_names, include_embeddings=options.include_embeddings)
        params = dict(student.named_parameters())
        selectable = sum(params[n].numel() for n in groups.selectable)
        what = "the student's body (LayerNorm excluded, embeddings " + \
            ("included)" if options.include_embeddings else "excluded)")
        k = sparse_count(options.density, options.sparse_params, selectable, what)
        for name in groups.frozen:
            params[name].requires_grad_(False)
        self.fingerprint = body_fingerprint(params, [n for n in params if n not in groups.head])
        self.ticket = LotteryTicket(student, groups, k)
        return groups, k, selectable

    def _load_batches(self, pair, accelerator):
        """The tokenized training pairs (cached under OUT/cache/) as batches; with --reduce-vocab
        only the embedding rows they use train."""
        from polyglot_distil.data.nli_batches import NLIBatches, cached_pairs
        from polyglot_distil.distill.training import CACHE

        options, main = self.options, accelerator.is_main_process
        show = False if options.no_progress or not main else None
        pairs = cached_pairs(self.tokenizer, self.train_pairs, options.max_length, show, Path(options.out) / CACHE,
                             main=main, barrier=accelerator.wait_for_everyone)
        self.train_data = NLIBatches(pairs, pair.student_labels(self.train_pairs.labels), options.batch_size,
                                     options.seed, options.length_buckets)
        if options.reduce_vocab:  # the ticket keeps theta0 and the mask full-size: K, mask and diff as full training's
            from polyglot_distil.models.used_vocab import restrict_to_pairs

            name, used, note = restrict_to_pairs(self.model, pairs)
            self.ticket.train_rows(name, used)
            if main:
                print(note, file=sys.stderr)
        return pairs

    def _teacher_cache(self, pair, pairs, accelerator):
        """With --teacher-cache, the teacher's outputs on the training pairs, built once and read
        back (teacher_cache.py); else None: the teacher computes them at each step."""
        options, weights = self.options, self.weights
        if not options.teacher_cache:
            return None
        from polyglot_distil.distill.teacher_cache import TeacherCache
        from polyglot_distil.models.student import hidden_state_pairs

        main = accelerator.is_main_process
        return TeacherCache.open_or_build(
            options.teacher_cache, pair.teacher.model, options.teacher, pairs, pair.teacher_order(accelerator.device),
            hidden=[k for _, k in hidden_state_pairs(pair.layer_map)] if weights.hidden else [],
            attention=list(pair.layer_map) if weights.attention else [], max_length=options.max_length,
            batch_size=options.batch_size, device=accelerator.device, accelerator=accelerator,
            log=lambda text: print(text, file=sys.stderr) if main else None)

    # The step. Stage 1 trains every parameter; before the first step of stage 2 the ticket
    # switches (the mask chosen, every parameter back to theta0, a fresh optimizer), and from then
    # on the gradients outside the mask are zeroed. The loss is the classifier distillation's
    # (classifier_distillation.py: the student's forward, the teacher's or its cache's, the
    # weighted terms, token-averaged over the global batch); rows are logged with their stage;
    # each stage has its own learning-rate schedule.

    def before_step(self, step: int, model, optimizer) -> None:
        if step == self.stages.full:  # also after a resume from the checkpoint taken just before it
            self.ticket.switch(optimizer)

    def batch_counts(self, batch: dict) -> dict[str, float]:
        return batch_counts(batch)

    def loss(self, model, batch: dict):
        return self.distillation(model, batch)

    def after_backward(self, model) -> None:
        if self.ticket.mask is not None:
            self.ticket.mask_gradients()

    def scheduler(self, optimizer, settings):
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.stages.lr_multiplier)

    def row_fields(self, step: int) -> dict:
        return {"stage": self.stages.name(step)}

    def evaluate(self, model, accelerator) -> dict[str, float]:
        """{"dev_accuracy", "dev_agreement"} on the English dev pairs."""
        return self.dev_evaluation(model, accelerator)

    def save(self, trained, folder: Path) -> None:
        """The dense classifier, in --save-dtype or the student's dtype, with training.json."""
        from polyglot_distil.models.classifier import save_classifier

        save_classifier(trained, folder, self.options.student, self.tokenizer, self.info,
                        self.options.save_dtype or self.student_dtype)

    # theta0 and, once chosen, the mask: in every checkpoint, so either stage resumes exactly
    def extra_state(self) -> dict:
        return self.ticket.state()

    def load_extra_state(self, tensors: dict) -> None:
        self.ticket.load_state(tensors)


# ---------------------------------------------------------------------------------------------
# Command line


def run_distil_task(options: TaskSettings) -> dict:
    """The `distil task` stage: phase 2's two stages, then the sparse diff; returns the run's summary."""
    from safetensors.torch import load_file

    from polyglot_distil.data.nli_batches import epoch_batches, read_task_data
    from polyglot_distil.distill.settings import steps_for
    from polyglot_distil.models.student import layer_map_record
    from polyglot_distil.outputs import atomic_dir
    from polyglot_distil.distill.diff import write_diff
    from polyglot_distil.distill.training import train

    weights = options.loss_weights()
    if options.warmup_steps < 0:
        raise UserError(f"--warmup-steps must be 0 or more, not {options.warmup_steps}")
    if options.reduce_vocab and not options.include_embeddings:
        raise UserError("--reduce-vocab trains fewer embedding rows, but --exclude-embeddings freezes them all; "
                        "pass one of the two")
    train_data, dev_data = read_task_data(options.train, options.dev, options.max_train_pairs, options.seed)
    batches_per_epoch = epoch_batches(len(train_data), options.batch_size)
    stages = Stages(steps_for(options.full_epochs, batches_per_epoch, "--full-epochs"),
                    steps_for(options.sparse_epochs, batches_per_epoch, "--sparse-epochs"), options.warmup_steps)
    settings = options.checkpointed_settings(options.out, stages.full + stages.sparse, batches_per_epoch,
                                             no_progress=options.no_progress)
    run_config = {
        "phase": "task", "teacher": str(options.teacher), "student": str(options.student), "task": options.task,
        "train": options.train, "dev": options.dev, "max_train_examples": options.max_train_pairs,
        "max_length": options.max_length, "length_buckets": options.length_buckets, "full_epochs": options.full_epochs,
        "sparse_epochs": options.sparse_epochs,
        "density": options.density, "sparse_params": options.sparse_params, "include_embeddings": options.include_embeddings,
        "weights": asdict(weights), "layer_map": layer_map_record(options.layer_map),
        "teacher_cache": bool(options.teacher_cache),
        **({"save_dtype": options.save_dtype} if options.save_dtype else {}),
        **({"reduce_vocab": True} if options.reduce_vocab else {}),
    }
    phase = TaskPhase(options, weights, stages, train_data, dev_data)
    result = train(settings, run_config, phase)
    if not result.is_main_process:
        return result.summary()
    out = Path(options.out)
    if not (out / "best" / "model.safetensors").is_file():
        raise UserError(f"{out / 'best'} is missing, so no sparse diff can be written; rerun with --overwrite")
    best = load_file(out / "best" / "model.safetensors")
    with atomic_dir(out / "sparse_diff", overwrite=True) as tmp:
        record = write_diff(tmp, best, phase.ticket, out / "best" / "config.json", phase.diff_record)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.last_train.items() if k in ("loss", *TERMS))
    # best/ is chosen among the sparse stage's evaluations only (phase 2's output is the sparse
    # model); the full stage's, which metrics.jsonl also holds, may be higher
    lines = [f"step {result.step} ({stages.full} full + {stages.sparse} sparse): {summary}; best dev accuracy of the "
             f"sparse stage (kept as best/) {result.best_value:.4f} at step {result.best_step}; K = {record['k']:,}",
             f"wrote {out / 'best'}, {result.final_dir} and {out / 'sparse_diff'}"]
    return {**result.summary(), "k": record["k"], "sparse_diff": str(out / "sparse_diff"), "lines": lines}
