"""`quantize`: int8 weights for a trained model, post-training or by quantization-aware distillation.

    polyglot-distil quantize --model out/task/best --out out/student-int8                    # dynamic int8
    polyglot-distil quantize --model out/task/best --out out/student-int8 --embeddings int8  # tables too
    polyglot-distil quantize --model out/task/best --method qat --teacher out/teacher-nli/best \
        --train corpora/nli/train-en.tsv --dev corpora/nli/dev-en.tsv --epochs 1 --out out/student-qat
    polyglot-distil quantize ... --method qat --bits 4 --quantize-activations --out out/student-qat4

`--method dynamic` (post-training): every Linear layer's weight becomes int8, one symmetric scale
per output row from its largest |weight|; at run time PyTorch's dynamic int8 kernels quantize the
activations per batch (CPU). Embedding tables stay float unless `--embeddings int8` (one scale per
row). OUT is the int8 folder (models/quantized.py: `load_int8(OUT)` loads it; `eval xnli --model
OUT` evaluates it).

`--method qat`, quantization-aware distillation after KDLSQ-BERT: every Linear layer of the model
computes with fake-quantized weights, round(w / s) * s clipped to the `--bits` grid, with a learned
step s per output row (LSQ, Esser et al. 2020: straight-through rounding, the step's gradient scaled
by 1 / sqrt(row length x qmax)), and with `--quantize-activations` also fake-quantized inputs with a
learned step per layer. It trains, through the one training loop (checkpoints, `--resume`,
metrics.jsonl), against the teacher's outputs with phase 2's classifier distillation
(`classifier_distillation.py`: the pair, the dev evaluation, the loss), each term weighted: logits
(a KL at --temperature, no T^2: 0 when the student matches), hidden, attention (off by default:
eager attention is slower), label (off by default).

The teacher defaults to the float model itself; a task teacher with more layers is paired as in
phase 2 (`--layer-map`, default BiStil's 2i+1). Steps start at the dynamic method's scales at
8 bits (`--step-init max`) and at LSQ's 2 mean|w| / sqrt(qmax) below (`lsq`). OUT/best/ (best English
dev accuracy) and OUT/final/ are int8 folders, converted with the learned steps: the same integers
the fake-quantized model computed with. The int8 model quantizes activations dynamically (8 bits,
per batch), so learned activation steps serve the training only, and a 4- or 2-bit model is stored
and run as int8 on fewer levels. With `--embeddings int8` the tables are quantized at the
conversion, with observed scales (they are not trained fake-quantized).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from polyglot_distil.data.nli_batches import TaskData
from polyglot_distil.distill.classifier_distillation import TERMS, QATLossWeights, weights_of
from polyglot_distil.distill.general import LAYER_MAP
from polyglot_distil.distill.phase import TrainingPhase
from polyglot_distil.distill.settings import REDUCE_VOCAB, TRAINING, Checkpointing
from polyglot_distil.errors import UserError
from polyglot_distil.options import APPEND, FLAG, NO_PROGRESS, READS, TRUST_REMOTE_CODE, WRITES, like, setting


QAT = "quantization-aware distillation (--method qat)"


@dataclass(kw_only=True)
class QuantizeSettings(Checkpointing, TaskData):
    """`quantize`'s settings (the command line's options, a `run` config's `quantize:` section). The
    saved models are int8 whatever the training dtype: no --save-dtype."""

    PART_GROUPS: ClassVar[dict] = {TaskData: QAT}
    GROUP_TITLES: ClassVar[dict] = {TRAINING: "training (--method qat)"}

    model: str = setting(role=READS, help="the float model folder (e.g. the best/ of 'distil task')")
    out: str = setting(role=WRITES, help="the int8 model folder (dynamic), or the training folder whose best/ and "
                                         "final/ are int8 (qat)")
    method: str = setting("dynamic", choices=("dynamic", "qat"),
                          help="dynamic: post-training int8; qat: quantization-aware distillation (LSQ steps)")
    bits: int = setting(8, choices=(8, 4, 2), help="weight bits (below 8: --method qat)")
    embeddings: str = setting("float", choices=("float", "int8"), help="int8: embedding tables too, one scale per row")
    teacher: str | None = setting(None, role=READS, group=QAT, help="the teacher (default: --model itself, in float)")
    train: list[str] = setting([], kind=APPEND, role=READS, metavar="SOURCE",
                               help="English training pairs: TSV/JSONL file or hf:NAME?split=train (repeatable)")
    dev: list[str] = setting([], kind=APPEND, role=READS, metavar="SOURCE",
                             help="English dev pairs, for the best model (repeatable)")
    epochs: float = setting(1.0, group=QAT, help="passes over the training pairs (fractions allowed)")
    quantize_activations: bool = setting(False, kind=FLAG, group=QAT,
                                         help="fake-quantize every Linear layer's input too")
    step_init: str = setting("auto", advanced=True, choices=("auto", "max", "lsq"), group=QAT,
                             help="initial steps: max (largest |w| per row), lsq (2 mean|w| / sqrt(qmax)); auto: max "
                                  "at 8 bits, lsq below")
    dropout: float = setting(0.0, group=QAT, help="dropout while training")
    temperature: float = setting(2.0, group=QAT, help="softmax temperature of the logit loss")
    logits_weight: float = setting(1.0, group=QAT)
    hidden_weight: float = setting(1.0, group=QAT)
    attention_weight: float = setting(0.0, group=QAT)
    label_weight: float = setting(0.0, group=QAT)
    layer_map: str | None = like(LAYER_MAP, group=QAT)
    lr: float = setting(1e-5, group=TRAINING)
    batch_size: int = setting(32, group=TRAINING, help="pairs per optimizer step, all processes together")
    reduce_vocab: bool = like(REDUCE_VOCAB, advanced=True)
    no_progress: bool = like(NO_PROGRESS)
    trust_remote_code: bool = like(TRUST_REMOTE_CODE)

    def loss_weights(self) -> QATLossWeights:
        return weights_of(self, QATLossWeights())


# ---------------------------------------------------------------------------------------------
# Learned step-size quantization (LSQ)


def lsq_quantize(value, step, limit: int, grad_scale: float):
    """round(value / step) * step, clipped to [-limit, limit] steps, with LSQ's gradients: the
    rounding passes gradients straight through, the step's gradient is scaled by `grad_scale`.
    `step` broadcasts against `value` (one per row: [rows, 1])."""
    import torch

    step = step.abs().clamp_min(torch.finfo(torch.float32).tiny)
    scaled = (step - step * grad_scale).detach() + step * grad_scale  # value of step, gradient x grad_scale
    ratio = torch.clamp(value / scaled, -limit, limit)
    return ((ratio.round() - ratio).detach() + ratio) * scaled


def fake_quant_linear_class():
    import torch

    from polyglot_distil.models.quantized import qmax

    class FakeQuantLinear(torch.nn.Linear):
        """A Linear layer computing with weights fake-quantized to `bits` with a learned step per
        output row (`weight_step`), and optionally inputs with a learned step (`input_step`)."""

        def __init__(self, linear: torch.nn.Linear, bits: int, step, activations: bool):
            torch.nn.Module.__init__(self)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight, self.bias = linear.weight, linear.bias
            self.bits, self.limit = bits, qmax(bits)
            self.weight_step = torch.nn.Parameter(step.detach().clone().float().to(linear.weight.device))
            self.input_step = torch.nn.Parameter(torch.ones((), device=linear.weight.device)) if activations else None

        def quantized_weight(self):
            return lsq_quantize(self.weight, self.weight_step[:, None], self.limit,
                                1.0 / math.sqrt(self.in_features * self.limit))

        def forward(self, x):
            if self.input_step is not None:
                x = lsq_quantize(x, self.input_step, self.limit, 1.0 / math.sqrt(x.numel() * self.limit))
            return torch.nn.functional.linear(x, self.quantized_weight(), self.bias)

    return FakeQuantLinear


def initial_steps(weight, bits: int, how: str):
    """float32[rows]: the step each row starts from. "max": the dynamic method's (largest |w| to
    qmax); "lsq": LSQ's 2 mean|w| / sqrt(qmax)."""
    from polyglot_distil.models.quantized import observed_scales, qmax

    if how == "max":
        return observed_scales(weight, bits)
    return (2 * weight.detach().abs().mean(dim=1).float() / math.sqrt(qmax(bits))).clamp_min(1e-8)


def fake_quantize_model(model, bits: int, activations: bool, step_init: str) -> list[str]:
    """Replace every nn.Linear of `model` by a FakeQuantLinear (in place); their names."""
    import torch

    FakeQuantLinear = fake_quant_linear_class()
    how = step_init if step_init != "auto" else ("max" if bits == 8 else "lsq")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no Linear layer to quantize")
    for name in names:
        linear = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                FakeQuantLinear(linear, bits, initial_steps(linear.weight, bits, how), activations))
    return names


def calibrate_input_steps(model, inputs: dict) -> None:
    """Set every input step to LSQ's 2 mean|x| / sqrt(qmax), x the layer's inputs on `inputs`."""
    import torch

    seen = {}

    def record(module, args) -> None:  # a pre-hook that returns something replaces the input
        seen.setdefault(module, args[0].detach().abs().mean())

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if getattr(m, "input_step", None) is not None]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for module, mean in seen.items():
            module.input_step.fill_(float(2 * mean / math.sqrt(module.limit)) or 1e-8)


def learned_steps(model) -> dict:
    """{Linear name: its learned weight step per row}, for the int8 conversion."""
    return {n: m.weight_step.detach().abs() for n, m in model.named_modules() if hasattr(m, "weight_step")}


# ---------------------------------------------------------------------------------------------
# The two methods


def _source_bytes(folder: str) -> int | None:
    files = list(Path(folder).glob("*.safetensors")) + list(Path(folder).glob("*.bin"))
    return sum(p.stat().st_size for p in files) or None


def _check_source(path: str) -> None:
    from polyglot_distil.models.quantized import is_int8_folder

    if is_int8_folder(path):
        raise UserError(f"{path} is already an int8 model; quantize the float model it was made from")
    if Path(path).suffix == ".onnx" or (Path(path) / "model.onnx").is_file():
        raise UserError(f"{path} is an ONNX model; quantize the PyTorch model folder it was exported from "
                        "(or 'export onnx --int8' for onnxruntime's int8 variant)")


def quantize_dynamic(options: QuantizeSettings) -> dict:
    """Post-training int8: write OUT from the float model."""
    from transformers import AutoConfig

    from polyglot_distil.models.loading import check_tokenizer_fits, copy_tokenizer, load_model, load_tokenizer, \
        model_class_for
    from polyglot_distil.models.quantized import WEIGHTS_FILE, save_int8
    from polyglot_distil.outputs import atomic_dir, check_writable

    check_writable(options.out, options.overwrite)
    config = load_model(options.model, AutoConfig, trust_remote_code=options.trust_remote_code)
    model = load_model(options.model, model_class_for(config), trust_remote_code=options.trust_remote_code).eval()
    tokenizer = load_tokenizer(options.model, options.trust_remote_code)
    check_tokenizer_fits(model, tokenizer, options.model)
    with atomic_dir(options.out, options.overwrite) as tmp:
        record = save_int8(model, tmp, 8, "dynamic", embeddings=options.embeddings == "int8")
        copy_tokenizer(options.model, tmp, tokenizer)
        report = {"command": "quantize", "model": str(options.model), "method": "dynamic", "bits": 8,
                  "embeddings": options.embeddings, "linear_layers": len(record["linear"]),
                  "embedding_tables": len(record["embeddings"]), "float_bytes": _source_bytes(options.model),
                  "int8_bytes": (tmp / WEIGHTS_FILE).stat().st_size}
        (tmp / "quantize.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    before = f"{report['float_bytes'] / 1e6:.1f} MB -> " if report["float_bytes"] else ""
    return {**report, "lines": [f"int8: {report['linear_layers']} Linear layers" +
                                (f" and {report['embedding_tables']} embedding tables" if report["embedding_tables"]
                                 else "") +
                                f"; weights {before}{report['int8_bytes'] / 1e6:.1f} MB; wrote {options.out} "
                                "(load it with polyglot_distil.models.quantized.load_int8)"]}


class QATPhase(TrainingPhase):
    """Quantization-aware distillation on the training loop: the float model, fake-quantized,
    learns against its teacher with phase 2's classifier distillation; the highest English dev
    accuracy picks OUT/best/; best/ and final/ are saved as int8 folders. `info` is what their
    training.json records."""

    best_metric, higher_is_better, evaluates = "dev_accuracy", True, True

    def __init__(self, options: QuantizeSettings, weights: QATLossWeights, train_data, dev_data):
        self.options, self.weights, self.train_pairs, self.dev_data = options, weights, train_data, dev_data

    def load(self, accelerator) -> None:
        """The float model (the student, fake-quantized), its teacher (itself by default), the
        batches (and the first one's input steps), the dev evaluation."""
        import torch

        from polyglot_distil.data.nli_batches import NLIBatches, encode_pairs, model_inputs
        from polyglot_distil.distill.classifier_distillation import ClassifierLoss, DevEvaluation, \
            attention_implementation, pair_with_teacher
        from polyglot_distil.models.classifier import load_classifier

        options, weights = self.options, self.weights
        # the pair: the float model, in its own class order, and its teacher (itself by default)
        teacher_path = options.teacher or options.model
        student = load_classifier(options.model, attn_implementation=attention_implementation(weights),
                                  trust_remote_code=options.trust_remote_code)
        pair = pair_with_teacher(teacher_path, student.model, options.model, student.tokenizer, student.to_xnli,
                                 weights, options.layer_map, options.trust_remote_code, teacher_dtype=None)
        model, self.tokenizer = student.model, student.tokenizer
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = options.dropout
        names = fake_quantize_model(model, options.bits, options.quantize_activations, options.step_init)
        self.model = model

        # data
        show = False if options.no_progress or not accelerator.is_main_process else None
        pairs = encode_pairs(self.tokenizer, self.train_pairs, options.max_length, show)
        self.train_data = NLIBatches(pairs, pair.student_labels(self.train_pairs.labels), options.batch_size,
                                     options.seed, options.length_buckets)
        if options.quantize_activations:
            calibrate_input_steps(model, model_inputs(self.train_data.batch(0)))
        if options.reduce_vocab:
            from polyglot_distil.models.used_vocab import restrict_to_pairs

            _, _, note = restrict_to_pairs(model, pairs)
            if accelerator.is_main_process:
                print(note, file=sys.stderr)

        # loss and evaluation
        pair.teacher_to(accelerator.device)
        self.distillation = ClassifierLoss(pair, weights, accelerator.device)
        self.dev_evaluation = DevEvaluation(pair, self.dev_data, options.batch_size, options.max_length, accelerator)
        if accelerator.is_main_process:
            print(f"qat: {len(names)} Linear layers fake-quantized to {options.bits} bits"
                  f"{' (inputs too)' if options.quantize_activations else ''}; teacher {teacher_path}", file=sys.stderr)

        self.info = {"command": "quantize --method qat", "model": str(options.model), "teacher": str(teacher_path),
                     "bits": options.bits, "quantize_activations": options.quantize_activations,
                     "train": options.train, "dev": options.dev, "train_pairs": len(self.train_pairs),
                     "weights": asdict(weights), "layer_map": pair.layer_map}

    def loss(self, model, batch: dict):
        """The classifier distillation's loss (classifier_distillation.py: the fake-quantized
        student's forward, the teacher's, the weighted terms), averaged over this micro-batch's own
        tokens: QAT gives no `batch_counts`."""
        return self.distillation(model, batch)

    def evaluate(self, model, accelerator) -> dict[str, float]:
        """{"dev_accuracy", "dev_agreement"} of the fake-quantized model on the English dev pairs."""
        return self.dev_evaluation(model, accelerator)

    def save(self, trained, folder: Path) -> None:
        """An int8 folder, converted with the learned steps, with the tokenizer and training.json."""
        from polyglot_distil.models.loading import copy_tokenizer
        from polyglot_distil.models.quantized import save_int8
        from polyglot_distil.models.used_vocab import full_vocabulary

        with full_vocabulary(trained):
            save_int8(trained, folder, self.options.bits, "qat", learned_steps(trained),
                      embeddings=self.options.embeddings == "int8")
        copy_tokenizer(self.options.model, folder, self.tokenizer)
        (folder / "training.json").write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")


def quantize_qat(options: QuantizeSettings) -> dict:
    from polyglot_distil.data.nli_batches import epoch_batches, read_task_data
    from polyglot_distil.distill.settings import steps_for
    from polyglot_distil.distill.training import train
    from polyglot_distil.models.student import layer_map_record

    if not options.train or not options.dev:
        raise UserError("--method qat trains: pass --train SOURCE and --dev SOURCE (English NLI pairs)")
    if not 0 <= options.dropout < 1:
        raise UserError(f"--dropout {options.dropout}: a dropout probability is at least 0 and below 1")
    weights = options.loss_weights()
    train_data, dev_data = read_task_data(options.train, options.dev, options.max_train_pairs, options.seed)
    batches_per_epoch = epoch_batches(len(train_data), options.batch_size)
    steps = steps_for(options.epochs, batches_per_epoch, "--epochs")
    settings = options.checkpointed_settings(options.out, steps, batches_per_epoch, no_progress=options.no_progress)
    run_config = {"phase": "qat", "model": str(options.model), "teacher": str(options.teacher or options.model),
                  "bits": options.bits, "embeddings": options.embeddings, "quantize_activations": options.quantize_activations,
                  "step_init": options.step_init, "dropout": options.dropout, "train": options.train, "dev": options.dev,
                  "max_train_examples": options.max_train_pairs, "max_length": options.max_length, "length_buckets": options.length_buckets,
                  "epochs": options.epochs, "weights": asdict(weights), "layer_map": layer_map_record(options.layer_map),
                  **({"reduce_vocab": True} if options.reduce_vocab else {})}
    result = train(settings, run_config, QATPhase(options, weights, train_data, dev_data))
    if not result.is_main_process:
        return result.summary()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.last_train.items() if k in ("loss", *TERMS))
    return {**result.summary(), "lines": [
        f"step {result.step}: {summary}; best dev accuracy {result.best_value:.4f} at step {result.best_step}",
        f"wrote {Path(options.out) / 'best'} and {result.final_dir} (int8 folders: "
        "polyglot_distil.models.quantized.load_int8)"]}


def run_quantize(options: QuantizeSettings) -> dict:
    """The `quantize` stage: --method dynamic or qat; returns the report (dynamic) or the run's summary."""
    _check_source(options.model)
    if options.method == "dynamic":
        if options.bits != 8:
            raise UserError(f"--bits {options.bits}: post-training quantization is int8 only; fewer bits need "
                            "--method qat, which trains the steps")
        given = [flag for flag, value in (("--teacher", options.teacher), ("--train", options.train),
                                          ("--dev", options.dev), ("--quantize-activations",
                                                                   options.quantize_activations),
                                          ("--reduce-vocab", options.reduce_vocab)) if value]
        if given:
            raise UserError(f"{given[0]} applies to --method qat only (this is --method dynamic)")
        return quantize_dynamic(options)
    return quantize_qat(options)
