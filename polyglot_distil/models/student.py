"""Build a compact student from a teacher: fewer layers, optionally a narrower hidden size.

    polyglot-distil student --teacher out/trimmed --out out/student                  # half the layers
    polyglot-distil student --teacher out/trimmed --out out/student --init-layers 0,2,4,7,9,11
    polyglot-distil student --teacher out/trimmed --out out/student --init random    # BiStil's code
    polyglot-distil student --teacher out/trimmed --out out/student --hidden-size 384
    polyglot-distil student --teacher out/trimmed --out out/student --init-layers bottom   # LightMBERT
    polyglot-distil student --teacher out/trimmed --out out/student --init importance --heads 8 \
        --intermediate-size 1024 --importance-text fr=corpora/fr/sample.txt              # ETD-Impt

The student has the teacher's architecture and tokenizer with `--layers` layers (default half
the teacher's). With `--init teacher` (default) student layer j starts as a copy of teacher
layer `init_layers[j]` (default every other layer: 0, 2, 4, ...; DistilBERT: 0,2,4,7,9,11), and
the embeddings and masked-LM head are copied too; `--init-layers bottom` copies the bottom
layers 0, 1, ..., N-1 (LightMBERT). With `--init random` only the embeddings come from the
teacher (BiStil's released code). With a narrower `--hidden-size` the word embeddings start from
a truncated SVD of the teacher's (top components only, by `torch.svd_lowrank`; never a V x V
matrix) and every other weight is random.

With `--init importance` (ETD-Impt) a narrower student copies the teacher's most important parts
instead: in each layer the `--heads` attention heads and `--intermediate-size` feed-forward
neurons, and overall the hidden features, with the highest first-order importance on a sample of
`--importance-text` (models/importance.py: |weight x gradient| of the masked-LM loss, or of a
hidden-state reconstruction loss for a model without an MLM head). A kept head keeps the
teacher's head size, and a BERT layer projects to exactly its hidden size, so the hidden size is
heads x the teacher's head size (12 x 32 -> 8 heads: hidden 256). student.json lists the kept
heads and neurons of every layer, and the kept hidden features.

Distillation pairs student layer j with teacher layer `teacher_layer_for(j)`: the layer at the
same relative depth (12 -> 6: 1, 3, 5, 7, 9, 11, BiStil's 2j+1), and hidden state i (0 = the
embedding output) with the teacher's hidden state after that layer (BiStil's 2i).

Every encoder family of models/families.py is built the same way; where they differ: an ALBERT
teacher shares one layer across its depth, so its student is that same layer run fewer times
(`--init-layers` is refused: there is nothing to pick); a ModernBERT student's `layer_types`
(local or global attention) follow the layers it copies; embeddings narrower than the hidden size
(ALBERT, ELECTRA, RemBERT) keep their width in a narrower student.

Output: a normal model folder (config.json, model.safetensors, the teacher's tokenizer files)
plus `student.json` saying how it was built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from polyglot_distil.errors import UserError
from polyglot_distil.models.families import family_of, runnable_attention
from polyglot_distil.options import APPEND, READS, setting



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


LAYER_MAP_FILE = "layer_map.txt"  # what `distil search-map` writes: the best mapping, as --layer-map takes it


def parse_layers(text: str | None, option: str) -> list[int] | None:
    """`"0,2,4"` -> [0, 2, 4]; None stays None. A file, or a folder with a `layer_map.txt` (what
    `distil search-map` writes), holds the numbers."""
    if text is None:
        return None
    source = Path(text)
    if source.is_dir() and (source / LAYER_MAP_FILE).is_file():
        source = source / LAYER_MAP_FILE
    if source.is_file():
        text = source.read_text(encoding="utf-8").strip()
    elif source.is_dir():
        raise UserError(f"{option} {source}: the folder has no layer_map.txt (written by 'polyglot-distil "
                        "distil search-map')")
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated layer numbers, e.g. 0,2,4,7,9,11") from None
    if not layers:
        raise UserError(f"{option} is empty: name one teacher layer per student layer, e.g. 0,2,4")
    return layers


def layer_map_record(text: str | None, option: str = "--layer-map") -> str | None:
    """The mapping `text` gives, as a run's record keeps it: the numbers, not the file or folder
    they were read from (a search that found another mapping is another run)."""
    layers = parse_layers(text, option)
    return None if layers is None else ",".join(str(layer) for layer in layers)


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
    init_layers: list[int] | str | None = None  # or "bottom": layers 0..N-1 (LightMBERT)
    init: str = "teacher"  # or "random": only the embeddings come from the teacher; or "importance"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    heads: int | None = None
    dropout: float = 0.0
    seed: int = 0
    importance_text: list[str] | None = None  # LANG=SOURCE specs the importance scores read
    importance_lines: int = 1000  # per language


def resolve_init_layers(init_layers, teacher_layers: int, layers: int) -> list[int]:
    """The teacher layer copied into each student layer: the given list, "bottom" (0..N-1), or
    by default every other layer."""
    if init_layers == "bottom":
        return list(range(layers))
    return init_layers or default_init_layers(teacher_layers, layers)


def _layer_renamed(name: str, match, layer: int) -> str:
    """Tensor `name` of one layer (`match`: its family's layer_key on it) as the same tensor of `layer`."""
    return name[: match.start(1)] + str(layer) + name[match.end(1):]


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


def ffn_size_key(config) -> str:
    """The configuration key of a layer's feed-forward size: `intermediate_size` (BERT, XLM-R, E5)
    or `hidden_dim` (DistilBERT, whose `dim`, `n_layers` and `n_heads` transformers already maps
    to hidden_size, num_hidden_layers and num_attention_heads)."""
    for key in ("intermediate_size", "hidden_dim"):
        if isinstance(getattr(config, key, None), int):
            return key
    raise UserError(f"{type(config).__name__} names no feed-forward size (intermediate_size or hidden_dim): a "
                    "student is built from a BERT-style encoder (BERT, XLM-R, E5, DistilBERT)")


def _student_config(teacher_config, spec: StudentSpec, init_layers: list[int]):
    import copy

    if not 0 <= spec.dropout < 1:
        raise UserError(f"--dropout {spec.dropout}: a dropout probability is at least 0 and below 1 (BiStil: 0)")
    config = copy.deepcopy(teacher_config)
    family_of(teacher_config).slice_config(config, init_layers)  # the depth, and per-layer lists (layer_types)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, spec.dropout)
    if spec.init == "importance":
        return _importance_config(config, teacher_config, spec)
    width = spec.hidden_size or teacher_config.hidden_size
    if width > teacher_config.hidden_size:
        raise UserError(f"--hidden-size {width} is wider than the teacher's {teacher_config.hidden_size}; "
                        "a student can only be as wide or narrower")
    config.hidden_size = width
    ffn = ffn_size_key(teacher_config)
    setattr(config, ffn, spec.intermediate_size or round(
        getattr(teacher_config, ffn) * width / teacher_config.hidden_size))
    config.num_attention_heads = spec.heads or teacher_config.num_attention_heads
    if width % config.num_attention_heads:
        raise UserError(f"--hidden-size {width} is not a multiple of the {config.num_attention_heads} attention "
                        "heads; pass --heads with a divisor of it")
    return config


def _importance_config(config, teacher_config, spec: StudentSpec):
    """The shape of an importance-initialised student: kept heads keep the teacher's head size,
    so the hidden size is heads x head size; at most the teacher's heads and neurons."""
    if not family_of(teacher_config).bert_layout:
        raise UserError(f"--init importance knows BERT-layout layers (BERT, XLM-R, E5, ELECTRA, RemBERT), not those "
                        f"of {type(teacher_config).__name__}; use --init teacher or --init random")
    teacher_heads = teacher_config.num_attention_heads
    head_size = teacher_config.hidden_size // teacher_heads
    heads = spec.heads or (spec.hidden_size // head_size if spec.hidden_size else teacher_heads)
    if not 1 <= heads <= teacher_heads:
        raise UserError(f"--heads {heads}: the teacher's layers have {teacher_heads} attention heads; keep between "
                        f"1 and {teacher_heads}")
    if spec.hidden_size and spec.hidden_size != heads * head_size:
        raise UserError(f"--hidden-size {spec.hidden_size} with --init importance: a kept head keeps the teacher's "
                        f"head size ({head_size}), so {heads} heads make a hidden size of {heads * head_size}; "
                        "give --heads or a --hidden-size that is a multiple of the head size, not both")
    width = heads * head_size
    ffn = ffn_size_key(teacher_config)
    most = getattr(teacher_config, ffn)
    neurons = spec.intermediate_size or round(most * width / teacher_config.hidden_size)
    if not 1 <= neurons <= most:
        raise UserError(f"--intermediate-size {neurons}: the teacher's feed-forward layers have {most} neurons; "
                        f"keep between 1 and {most}")
    config.hidden_size, config.num_attention_heads = width, heads
    setattr(config, ffn, neurons)
    return config


def planned_config(teacher_config, spec: StudentSpec):
    """The student's configuration (its shape), checked, without building it."""
    teacher_layers = teacher_config.num_hidden_layers
    layers = spec.layers if spec.layers is not None else max(1, teacher_layers // 2)
    if not 1 <= layers <= teacher_layers:
        raise UserError(f"--layers {layers}: a student needs between 1 and the teacher's {teacher_layers} layers")
    if family_of(teacher_config).shared_layers and spec.init_layers is not None:
        raise UserError(f"--init-layers: {type(teacher_config).__name__} shares one layer across its depth; a student "
                        "with fewer layers runs that same layer fewer times, so there is no layer to pick; drop "
                        "--init-layers (--layer-map still names the teacher repetition each student layer imitates)")
    init_layers = resolve_init_layers(spec.init_layers, teacher_layers, layers)
    check_layers(init_layers, teacher_layers, layers, "--init-layers")
    if spec.init not in ("teacher", "random", "importance"):
        raise UserError(f"--init must be 'teacher', 'random' or 'importance', not {spec.init!r}")
    return _student_config(teacher_config, spec, init_layers)


# Where a layer tensor's dimensions index (BERT layout: BERT, XLM-R, E5): "hidden" features,
# kept heads' "rows" (head x head size), FFN "neurons"; by the name after `.layer.N.`.
_LAYER_AXES = {
    "attention.self.query.weight": ("rows", "hidden"), "attention.self.query.bias": ("rows",),
    "attention.self.key.weight": ("rows", "hidden"), "attention.self.key.bias": ("rows",),
    "attention.self.value.weight": ("rows", "hidden"), "attention.self.value.bias": ("rows",),
    "attention.output.dense.weight": ("hidden", "rows"), "attention.output.dense.bias": ("hidden",),
    "attention.output.LayerNorm.weight": ("hidden",), "attention.output.LayerNorm.bias": ("hidden",),
    "intermediate.dense.weight": ("neurons", "hidden"), "intermediate.dense.bias": ("neurons",),
    "output.dense.weight": ("hidden", "neurons"), "output.dense.bias": ("hidden",),
    "output.LayerNorm.weight": ("hidden",), "output.LayerNorm.bias": ("hidden",),
}


def _copy_important_parts(student, teacher, init_layers: list[int], kept: dict) -> None:
    """Copy into every student tensor the teacher's kept rows and columns: student layer j from
    teacher layer init_layers[j] (its kept heads and neurons), every tensor its kept hidden
    features (embeddings, LayerNorms, heads, pooler alike)."""
    import torch

    source = teacher.state_dict()
    family = family_of(teacher.config)
    hidden = torch.tensor(kept["hidden"])
    head_size = teacher.config.hidden_size // teacher.config.num_attention_heads
    width_t, width_s = teacher.config.hidden_size, student.config.hidden_size
    for name, tensor in student.state_dict().items():
        match = family.layer_number(name)
        if match:
            j = int(match.group(1))
            teacher_name = _layer_renamed(name, match, init_layers[j])
            axes = _LAYER_AXES.get(name[match.end():])
            if axes is None:
                raise UserError(f"{type(teacher).__name__}: tensor {name} is not laid out as a BERT layer's; "
                                "--init importance knows BERT, XLM-R and E5 layers")
            layer = kept["layers"][j]
            index = {"hidden": hidden, "neurons": torch.tensor(layer["neurons"]),
                     "rows": torch.tensor([h * head_size + i for h in layer["heads"] for i in range(head_size)])}
        else:
            teacher_name = name
            axes = tuple("hidden" if (s, t) == (width_s, width_t) and s != t else None
                         for s, t in zip(tensor.shape, source[name].shape))
            index = {"hidden": hidden}
        value = source[teacher_name]
        for dim, axis in enumerate(axes):
            if axis is not None:
                value = value.index_select(dim, index[axis])
        if value.shape != tensor.shape:
            raise UserError(f"{type(teacher).__name__}: tensor {name} has shape {tuple(tensor.shape)} in the student "
                            f"but {tuple(value.shape)} as taken from the teacher; --init importance knows BERT, "
                            "XLM-R and E5 layouts")
        tensor.copy_(value)


def select_kept(scores: dict, config, init_layers: list[int]) -> dict:
    """Per student layer, the teacher layer it comes from and its most important heads and
    neurons; overall, the most important hidden features (each list in increasing order)."""
    from polyglot_distil.models.importance import top_indices

    return {"loss": scores["loss"], "hidden": top_indices(scores["hidden"], config.hidden_size),
            "layers": [{"teacher_layer": t, "heads": top_indices(scores["heads"][t], config.num_attention_heads),
                        "neurons": top_indices(scores["neurons"][t], getattr(config, ffn_size_key(config)))}
                       for t in init_layers]}


def build_student(teacher, spec: StudentSpec, attn_implementation: str = "sdpa", importance: dict | None = None):
    """A masked-LM student of the teacher's architecture, shaped and initialised as `spec` says
    (`importance`: the teacher's scores, for `--init importance`; see `make_student`).
    Returns (student, description for student.json)."""
    import torch

    teacher_layers = teacher.config.num_hidden_layers
    family = family_of(teacher.config)
    config = planned_config(teacher.config, spec)
    layers = config.num_hidden_layers
    init_layers = resolve_init_layers(spec.init_layers, teacher_layers, layers)
    if spec.init == "importance" and importance is None:
        raise ValueError("--init importance needs the teacher's importance scores (make_student computes them)")
    same_shape = all(getattr(config, k) == getattr(teacher.config, k)
                     for k in ("hidden_size", ffn_size_key(teacher.config), "num_attention_heads"))

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random stream untouched
        torch.manual_seed(spec.seed)
        # the teacher's class: a masked-LM teacher gives a masked-LM student, a bare encoder a bare one;
        # and the teacher's dtype as loaded (the configuration's may be another: the dtype it was saved in)
        attention = runnable_attention(config, attn_implementation)  # DeBERTa-v2, RemBERT: eager
        student = type(teacher)._from_config(config, attn_implementation=attention, dtype=teacher.dtype)
    source = teacher.state_dict()
    kept = select_kept(importance, config, init_layers) if spec.init == "importance" else None
    with torch.no_grad():
        if kept is not None:
            _copy_important_parts(student, teacher, init_layers, kept)
        elif same_shape:
            for name, tensor in student.state_dict().items():
                match = family.layer_number(name)
                if match:
                    if spec.init == "random":
                        continue
                    name_in_teacher = _layer_renamed(name, match, init_layers[int(match.group(1))])
                elif spec.init == "random" and ".embeddings." not in f".{name}":
                    continue
                else:
                    name_in_teacher = name
                tensor.copy_(source[name_in_teacher])
        else:
            # embeddings narrower than the hidden size (ALBERT, ELECTRA, RemBERT) may keep their width
            word, teacher_word = student.get_input_embeddings().weight, teacher.get_input_embeddings().weight
            if word.shape == teacher_word.shape:
                word.copy_(teacher_word)
            else:
                reduced, _ = svd_embeddings(teacher_word, word.shape[1], spec.seed)
                word.copy_(reduced.to(word.dtype))
    student.tie_weights()
    init = spec.init if same_shape or kept is not None else "svd-embeddings"
    description = {
        "teacher_layers": teacher_layers, "layers": layers, "init": init,
        "init_layers": init_layers if init in ("teacher", "importance") and not family.shared_layers else None,
        "layer_map": default_layer_map(teacher_layers, layers), "spec": asdict(spec),
    }
    if kept is not None:
        description["kept"] = kept
    return student, description


def make_student(teacher, tokenizer, spec: StudentSpec, attn_implementation: str = "sdpa"):
    """`build_student`, with the teacher's importance scores measured first for `--init
    importance` (on `spec.importance_text`)."""
    importance = None
    if spec.init == "importance":
        from polyglot_distil.data.corpus import group_lang_specs
        from polyglot_distil.models.importance import importance_batches, importance_scores

        planned_config(teacher.config, spec)  # a shape error before the scoring's minutes
        batches = importance_batches(tokenizer, group_lang_specs(spec.importance_text), spec.importance_lines,
                                     teacher.get_input_embeddings().weight.shape[0], spec.seed)
        importance = importance_scores(teacher, batches)
    return build_student(teacher, spec, attn_implementation, importance)


# ---------------------------------------------------------------------------------------------
# Options


@dataclass(kw_only=True)
class StudentShape:
    """The options that shape a student (shared with `distil general` and `distil search-map`,
    which can build one)."""

    layers: int | None = setting(None, help="student layers (default: half the teacher's)")
    init_layers: str | None = setting(None, role=READS,  # a file or a search-map folder may hold the numbers
                                      help="teacher layer (0-based) copied into each student layer, e.g. "
                                      "0,2,4,7,9,11, or 'bottom': 0,1,...,N-1 (LightMBERT) (default: every other "
                                      "layer)")
    init: str = setting("teacher", choices=("teacher", "random", "importance"),
                        help="copy teacher layers (default); random layers with the teacher's embeddings; or the "
                             "teacher's most important heads and neurons (narrower; needs --importance-text)")
    hidden_size: int | None = setting(None, help="narrower hidden size (embeddings from an SVD)")
    intermediate_size: int | None = setting(None, help="feed-forward size (default: scaled with the width)")
    heads: int | None = setting(None, help="attention heads (default: the teacher's)")
    dropout: float = setting(0.0, help="hidden and attention dropout (BiStil: 0)")
    importance_text: list[str] | None = setting(
        None, kind=APPEND, role=READS, metavar="LANG=SOURCE",
        help="--init importance: text to score the teacher's heads and neurons on (as in 'count'); repeat")
    importance_lines: int = setting(1000, help="--init importance: lines read per language")

    def spec(self, seed: int) -> StudentSpec:
        """The library's `StudentSpec` of these options (checked: one line for a contradiction)."""
        bottom = self.init_layers is not None and self.init_layers.strip() == "bottom"
        text = list(self.importance_text or []) or None
        if self.init == "importance" and not text:
            raise UserError("--init importance needs --importance-text LANG=SOURCE: a sample of the target "
                            "languages' text on which the teacher's heads and neurons are scored")
        if text and self.init != "importance":
            raise UserError("--importance-text is read only with --init importance")
        if self.importance_lines < 1:
            raise UserError(f"--importance-lines must be at least 1, not {self.importance_lines}")
        init_layers = "bottom" if bottom else parse_layers(self.init_layers, "--init-layers")
        return StudentSpec(layers=self.layers, init_layers=init_layers, init=self.init, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, heads=self.heads, dropout=self.dropout,
                           seed=seed, importance_text=text, importance_lines=self.importance_lines)

    def shape_given(self) -> str | None:
        """The first option given that differs from building no student here (for `--student`'s check)."""
        for name in ("layers", "init_layers", "hidden_size", "intermediate_size", "heads"):
            if getattr(self, name) is not None:
                return name
        if self.init != "teacher":
            return "init"
        if self.importance_text:
            return "importance_text"
        return "dropout" if self.dropout != 0.0 else None


def built_from(student: str | Path) -> str | None:
    """The teacher a student folder was built from (its student.json), or None (not built by
    `student`, or a hub name)."""
    description = Path(student) / "student.json"
    try:
        return str(json.loads(description.read_text(encoding="utf-8"))["teacher"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
