"""Build a compact student from a teacher: fewer layers, optionally a narrower hidden size.

    polyglot-distil student --teacher out/trimmed --out out/student                  # half the layers
    polyglot-distil student --teacher out/trimmed --out out/student --init-layers 0,2,4,7,9,11
    polyglot-distil student --teacher out/trimmed --out out/student --init random    # BiStil's code
    polyglot-distil student --teacher out/trimmed --out out/student --hidden-size 384

The student has the teacher's architecture and tokenizer with `--layers` layers (default half
the teacher's). With `--init teacher` (default) student layer j starts as a copy of teacher
layer `init_layers[j]` (default every other layer: 0, 2, 4, ...; DistilBERT: 0,2,4,7,9,11), and
the embeddings and masked-LM head are copied too. With `--init random` only the embeddings
come from the teacher (BiStil's released code). With a narrower `--hidden-size` the word
embeddings start from a truncated SVD of the teacher's (top components only, by
`torch.svd_lowrank`; never a V x V matrix) and every other weight is random.

Distillation pairs student layer j with teacher layer `teacher_layer_for(j)`: the layer at the
same relative depth (12 -> 6: 1, 3, 5, 7, 9, 11, BiStil's 2j+1), and hidden state i (0 = the
embedding output) with the teacher's hidden state after that layer (BiStil's 2i).

Output: a normal model folder (config.json, model.safetensors, the teacher's tokenizer files)
plus `student.json` saying how it was built.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

from polyglot_distil.errors import UserError
from polyglot_distil.models.checkpoint import carry_body_tensors
from polyglot_distil.models.loading import copy_tokenizer
from polyglot_distil.options import OVERWRITE, SEED, TRUST_REMOTE_CODE, Command, Option, out_option
from polyglot_distil.outputs import atomic_dir, check_writable
from polyglot_distil.params import count_parameters

_LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")


# ---------------------------------------------------------------------------------------------
# Layer mappings


def default_init_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer copied into each student layer: evenly spaced from the bottom
    (12 -> 6: [0, 2, 4, 6, 8, 10])."""
    return [j * teacher_layers // student_layers for j in range(student_layers)]


def teacher_layer_for(student_layer: int, teacher_layers: int, student_layers: int) -> int:
    """The teacher layer whose output student layer `student_layer` imitates: the same relative
    depth, ending on the last layer (12 -> 6: 2j+1)."""
    return (student_layer + 1) * teacher_layers // student_layers - 1


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    return [teacher_layer_for(j, teacher_layers, student_layers) for j in range(student_layers)]


def hidden_state_pairs(layer_map: list[int]) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices, 0 being the embedding output: state j+1 is the
    output of layer j, so [(0, 0)] + [(j + 1, layer_map[j] + 1)]."""
    return [(0, 0)] + [(j + 1, t + 1) for j, t in enumerate(layer_map)]


def parse_layers(text: str | None, option: str) -> list[int] | None:
    """`"0,2,4"` -> [0, 2, 4]; None stays None."""
    if text is None:
        return None
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated layer numbers, e.g. 0,2,4,7,9,11") from None
    if not layers:
        raise UserError(f"{option} is empty: name one teacher layer per student layer, e.g. 0,2,4")
    return layers


def check_layers(layers: list[int], teacher_layers: int, student_layers: int, option: str) -> None:
    """One teacher layer per student layer, each one that exists (0-based)."""
    if len(layers) != student_layers:
        raise UserError(f"{option} names {len(layers)} teacher layers but the student has {student_layers} "
                        f"layers; give exactly one per student layer")
    for layer in layers:
        if not 0 <= layer < teacher_layers:
            raise UserError(f"{option}: teacher layer {layer} does not exist (the teacher has {teacher_layers} "
                            f"layers, numbered 0 to {teacher_layers - 1})")


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class StudentSpec:
    """How to build a student. None means: like the teacher (layers: half of it)."""

    layers: int | None = None
    init_layers: list[int] | None = None
    init: str = "teacher"  # or "random": only the embeddings come from the teacher
    hidden_size: int | None = None
    intermediate_size: int | None = None
    heads: int | None = None
    dropout: float = 0.0
    seed: int = 0


def svd_embeddings(weight, rank: int, seed: int = 0):
    """Top-`rank` truncated SVD of word embeddings [V, H] = U S Vh: returns (U S [V, rank], the
    right singular vectors [H, rank]). U S = weight @ V is the projection of every embedding onto
    the top components; only [V, rank + 8] and [H, rank + 8] matrices are formed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = min(rank + 8, *weight.shape)
        u, s, v = torch.svd_lowrank(weight.detach().float(), q=q, niter=4)
    return u[:, :rank] * s[:rank], v[:, :rank]


def _student_config(teacher_config, spec: StudentSpec, layers: int):
    import copy

    if not 0 <= spec.dropout < 1:
        raise UserError(f"--dropout {spec.dropout}: a dropout probability is at least 0 and below 1 (BiStil: 0)")
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = layers
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, spec.dropout)
    width = spec.hidden_size or teacher_config.hidden_size
    if width > teacher_config.hidden_size:
        raise UserError(f"--hidden-size {width} is wider than the teacher's {teacher_config.hidden_size}; "
                        "a student can only be as wide or narrower")
    config.hidden_size = width
    config.intermediate_size = spec.intermediate_size or round(
        teacher_config.intermediate_size * width / teacher_config.hidden_size)
    config.num_attention_heads = spec.heads or teacher_config.num_attention_heads
    if width % config.num_attention_heads:
        raise UserError(f"--hidden-size {width} is not a multiple of the {config.num_attention_heads} attention "
                        "heads; pass --heads with a divisor of it")
    return config


def build_student(teacher, spec: StudentSpec, attn_implementation: str = "sdpa"):
    """A masked-LM student of the teacher's architecture, shaped and initialised as `spec` says.
    Returns (student, description for student.json)."""
    import torch

    teacher_layers = teacher.config.num_hidden_layers
    layers = spec.layers if spec.layers is not None else max(1, teacher_layers // 2)
    if not 1 <= layers <= teacher_layers:
        raise UserError(f"--layers {layers}: a student needs between 1 and the teacher's {teacher_layers} layers")
    init_layers = spec.init_layers or default_init_layers(teacher_layers, layers)
    check_layers(init_layers, teacher_layers, layers, "--init-layers")
    if spec.init not in ("teacher", "random"):
        raise UserError(f"--init must be 'teacher' or 'random', not {spec.init!r}")
    config = _student_config(teacher.config, spec, layers)
    same_shape = all(getattr(config, k) == getattr(teacher.config, k)
                     for k in ("hidden_size", "intermediate_size", "num_attention_heads"))

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random stream untouched
        torch.manual_seed(spec.seed)
        # the teacher's class: a masked-LM teacher gives a masked-LM student, a bare encoder a bare one;
        # and the teacher's dtype as loaded (the configuration's may be another: the dtype it was saved in)
        student = type(teacher)._from_config(config, attn_implementation=attn_implementation, dtype=teacher.dtype)
    source = teacher.state_dict()
    with torch.no_grad():
        if same_shape:
            for name, tensor in student.state_dict().items():
                match = _LAYER_KEY.search(name)
                if match:
                    if spec.init == "random":
                        continue
                    name_in_teacher = (name[: match.start()] + f".layer.{init_layers[int(match.group(1))]}."
                                       + name[match.end():])
                elif spec.init == "random" and ".embeddings." not in f".{name}":
                    continue
                else:
                    name_in_teacher = name
                tensor.copy_(source[name_in_teacher])
        else:
            word = student.get_input_embeddings().weight
            reduced, _ = svd_embeddings(teacher.get_input_embeddings().weight, config.hidden_size, spec.seed)
            word.copy_(reduced.to(word.dtype))
    student.tie_weights()
    description = {
        "teacher_layers": teacher_layers, "layers": layers, "init": spec.init if same_shape else "svd-embeddings",
        "init_layers": init_layers if same_shape and spec.init == "teacher" else None,
        "layer_map": default_layer_map(teacher_layers, layers), "spec": asdict(spec),
    }
    return student, description


# ---------------------------------------------------------------------------------------------
# Command line


def spec_from_args(args) -> StudentSpec:
    return StudentSpec(layers=args.layers, init_layers=parse_layers(args.init_layers, "--init-layers"),
                       init=args.init, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                       heads=args.heads, dropout=args.dropout, seed=args.seed)


def run_student(args) -> dict:
    from transformers import AutoConfig

    from polyglot_distil.models.loading import encoder_class_for, load_model

    check_writable(args.out, args.overwrite)
    spec = spec_from_args(args)
    config = load_model(args.teacher, AutoConfig, trust_remote_code=args.trust_remote_code)
    teacher = load_model(args.teacher, encoder_class_for(config), trust_remote_code=args.trust_remote_code)
    student, description = build_student(teacher, spec)
    description["teacher"] = str(args.teacher)
    with atomic_dir(args.out, args.overwrite) as tmp:
        student.save_pretrained(tmp)
        description["kept_from_teacher"] = carry_body_tensors(args.teacher, tmp)  # e.g. a pooler the class lacks
        copy_tokenizer(args.teacher, tmp)
        (tmp / "student.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    print(f"student: {description['layers']} layers (teacher {description['teacher_layers']}), "
          f"hidden {student.config.hidden_size}, {count_parameters(student)['total']:,} parameters "
          f"(teacher {count_parameters(teacher)['total']:,}); init {description['init']}"
          + (f" from teacher layers {description['init_layers']}" if description["init_layers"] else ""))
    print(f"wrote {args.out}")
    return description


STUDENT_OPTIONS = [  # the options that shape a student (shared with `distil general`, which can build one)
    Option("layers", type=int, help="student layers (default: half the teacher's)"),
    Option("init_layers", help="teacher layer (0-based) copied into each student layer, e.g. "
                               "0,2,4,7,9,11 (default: every other layer)"),
    Option("init", choices=("teacher", "random"), default="teacher",
           help="copy teacher layers (default), or random layers with the teacher's embeddings"),
    Option("hidden_size", type=int, help="narrower hidden size (embeddings from an SVD)"),
    Option("intermediate_size", type=int, help="feed-forward size (default: scaled with the width)"),
    Option("heads", type=int, help="attention heads (default: the teacher's)"),
    Option("dropout", type=float, default=0.0, help="hidden and attention dropout (BiStil: 0)"),
]

STUDENT = Command(
    ("student",), "build a compact student from a teacher", description=__doc__.split("\n\n")[0],
    run=run_student, options=[
        Option("teacher", required=True, help="teacher model folder (e.g. the trimmed model) or hub name"),
        out_option("the student model folder to write"),
        *STUDENT_OPTIONS,
        replace(SEED, help="seed for the random weights"),
        replace(OVERWRITE, help="replace an existing output folder"),
        TRUST_REMOTE_CODE,
    ])
