"""Phase 1: general bilingual distillation of a compact student on masked-LM text (BiStil).

    polyglot-distil distil general --teacher out/trimmed --student out/student \
        --lang en=corpora/en/manifest.yaml --lang fr=corpora/fr/manifest.yaml --out out/phase1
    polyglot-distil distil general --teacher out/trimmed --layers 6 --init-layers 0,2,4,7,9,11 \
        --lang en=... --lang fr=... --recipe distilbert --out out/phase1       # student built here
    accelerate launch --multi_gpu --num_processes 4 -m polyglot_distil distil general ...  # 4 GPUs
    polyglot-distil distil general ... --out out/phase1 --resume               # after an interruption

The teacher (frozen, eval mode, no gradients) and the student read the same masked blocks of
each language's text (sources as in `count`), the languages balanced 50/50, each batch from one
language. Losses, each with its weight (`--recipe bistil`, the default: hidden 1, attention 1;
`--recipe distilbert`: logits 5, mlm 2, cosine 1; `--recipe minilm`: relation 1):

    hidden     mean over i of MSE(student hidden state i, teacher hidden state map(i)), 0 = embeddings
    attention  mean over layers j of MSE(student attention j, teacher attention layer_map[j]), no padding
    logits     KL(teacher || student) at --temperature, times T^2, over every token (or only the
               masked ones: --logit-positions masked, DistilBERT's --restrict_ce_to_mask)
    mlm        masked-LM cross-entropy on the masked tokens
    cosine     1 - cos(student, teacher) of the last hidden states
    relation   MiniLMv2: KL between the teacher's and the student's query-query, key-key and
               value-value relations (softmax of scaled dot products over the tokens, in
               --relation-heads heads), teacher layer --relation-layer (default the last) against the
               student's last layer; no projection, so the student may be narrower

`--layer-map 1,3,5,7,9,11` names the teacher layer each student layer imitates (default: the
same relative depth, BiStil's 2j+1). Only what the enabled losses need is computed: attention
maps (and the slower eager attention, which DeBERTa-v2 and RemBERT always run) only with the
attention loss, MLM-head logits only with the logit or MLM loss, and then only at the positions
used; of the teacher's hidden states and attention maps only those of the layers the layer map
names are kept; the relation loss reads queries, keys and values (ModernBERT's fused Wqkv split in
three) from hooks on one layer, with the fast attention kernel kept. Every family of
models/families.py serves every recipe; an ALBERT layer map names repetitions of its shared
layer. A student narrower than the teacher is compared through a learned projection of its hidden
states (TinyBERT), initialised by least squares between the two embedding matrices (at random
where the embeddings are narrower than the hidden states: ALBERT, ELECTRA, RemBERT).
`--freeze-embeddings` keeps the student's embeddings (word, position, type, their LayerNorm) as
they start (LightMBERT).

The text is tokenized once, by the main process, into memory-mapped blocks, OUT/cache/tokens-KEY/
(data/token_cache.py, keyed by the sources' fingerprints, the tokenizer and the block settings):
the other processes wait for it, a resumed run reuses it.

Output (see training.py): OUT/final/ and OUT/best/ (model folders with the tokenizer),
OUT/checkpoints/, OUT/metrics.jsonl, OUT/run_config.json, OUT/cache/.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import ClassVar
from pathlib import Path

from polyglot_distil.distill.objective import batch_counts, distillation_terms, resolve_weights, weighted_sum
from polyglot_distil.distill.phase import TrainingPhase
from polyglot_distil.errors import UserError
from polyglot_distil.distill.settings import SAVE_DTYPE, TRAINING, Checkpointing, Optimisation
from polyglot_distil.models.encoder import max_positions
from polyglot_distil.models.student import StudentShape, built_from
from polyglot_distil.options import APPEND, FLAG, NO_PROGRESS, READS, TRUST_REMOTE_CODE, WRITES, Option, \
    like, setting

TERMS = ("hidden", "attention", "logits", "mlm", "cosine", "relation")


@dataclass
class LossWeights:
    """Phase 1's term weights (see objective.py); TERMS is the order the terms are added in."""

    TERMS: ClassVar[tuple[str, ...]] = TERMS
    LOGIT_LOSS: ClassVar[str] = "kl"  # KL over the MLM vocabulary at T, times T²

    hidden: float = 1.0
    attention: float = 1.0
    logits: float = 0.0
    mlm: float = 0.0
    cosine: float = 0.0
    relation: float = 0.0
    temperature: float = 2.0
    logit_positions: str = "all"  # or "masked"
    relation_heads: int | None = None  # None: the teacher's attention heads
    relation_layer: int | None = None  # the teacher layer (0-based) of the relation loss; None: the last

    def enabled(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TERMS if getattr(self, name) > 0}


LAYER_MAP = Option("layer_map", role=READS,  # a file or a search-map folder may hold the numbers
                   help="teacher layer (0-based) each student layer imitates, e.g. 1,3,5,7,9,11")

RECIPES = {
    "bistil": LossWeights(hidden=1, attention=1),
    "distilbert": LossWeights(hidden=0, attention=0, logits=5, mlm=2, cosine=1),
    "minilm": LossWeights(hidden=0, attention=0, relation=1),  # MiniLMv2 (q-q, k-k, v-v)
}


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(kw_only=True)
class Phase1Sources:
    """The models and text of a phase-1 run."""

    teacher: str = setting(role=READS, help="teacher model folder (usually the trimmed model)")
    student: str | None = setting(None, role=READS, help="student model folder (from 'polyglot-distil student'); "
                                  "without it a student is built from the teacher with the options below")
    lang: list[str] = setting(kind=APPEND, role=READS, metavar="LANG=SOURCE",
                              help="a language and one of its text sources (as in 'count'); repeat per source and "
                                   "language")
    out: str = setting(role=WRITES, help="output folder (checkpoints, metrics, best/ and final/ models)")


DATA, LOSSES = "data", "losses"


@dataclass(kw_only=True)
class Phase1Settings(Optimisation, StudentShape, Phase1Sources):
    """What every phase-1 run reads: `distil general`'s settings, and each candidate run of `distil
    search-map` (which changes some defaults)."""

    PART_GROUPS: ClassVar[dict] = {StudentShape: "student (when --student is not given)"}

    block_size: int = setting(256, group=DATA, help="tokens per block, [CLS] and [SEP] included")
    max_lines: int | None = setting(None, group=DATA, help="cap on lines read per language (seeded sample)")
    mask_probability: float = setting(0.15, group=DATA)
    heldout_blocks: int = setting(100, group=DATA, help="blocks per language held out for the evaluation loss (0: none)")
    token_cache: str | None = setting(None, metavar="DIR", group=DATA,
                                      help="folder of the tokenized text, shared by runs on the same text, tokenizer "
                                           "and block settings (default: OUT/cache, the run's own)")
    recipe: str = setting("bistil", choices=tuple(sorted(RECIPES)), group=LOSSES, help="preset loss weights")
    hidden_weight: float | None = setting(None, group=LOSSES, help="weight of the hidden loss (overrides the recipe)")
    attention_weight: float | None = setting(None, group=LOSSES,
                                             help="weight of the attention loss (overrides the recipe)")
    logits_weight: float | None = setting(None, group=LOSSES, help="weight of the logits loss (overrides the recipe)")
    mlm_weight: float | None = setting(None, group=LOSSES, help="weight of the mlm loss (overrides the recipe)")
    cosine_weight: float | None = setting(None, group=LOSSES, help="weight of the cosine loss (overrides the recipe)")
    relation_weight: float | None = setting(None, group=LOSSES,
                                            help="weight of the relation loss (overrides the recipe)")
    temperature: float | None = setting(None, group=LOSSES, help="softmax temperature of the logit loss (default 2)")
    logit_positions: str = setting(
        "all", advanced=True, choices=("all", "masked"), group=LOSSES,
        help="tokens the logit loss covers: every token (DistilBERT's default) or the masked ones (15 percent of "
             "them). 'all' holds both models' logits over the whole vocabulary at every token and the student's "
             "gradient: 3 x tokens x vocabulary floats (about 6 GB in float32 at 8 x 256 tokens on an untrimmed 250k "
             "vocabulary: trim it first, or use 'masked'); the KL runs in chunks of rows, its softmaxes recomputed in "
             "the backward pass (no further [tokens, vocabulary] matrices; one more exp per logit)")
    relation_heads: int | None = setting(None, group=LOSSES,
                                         help="relation heads of the relation loss (MiniLMv2; default: the teacher's "
                                              "attention heads); must divide both hidden sizes")
    relation_layer: int | None = setting(None, group=LOSSES,
                                         help="teacher layer (0-based) the relation loss reads (default: the last; "
                                              "MiniLMv2 takes an upper-middle one for large teachers)")
    steps: int = setting(200_000, group=TRAINING, help="optimizer steps")
    batch_size: int = setting(8, group=TRAINING, help="blocks per optimizer step, all processes together")
    weight_decay: float = setting(0.0, group=TRAINING)
    freeze_embeddings: bool = setting(False, kind=FLAG, group=TRAINING,
                                      help="keep the student's embeddings as they start (LightMBERT)")
    no_progress: bool = like(NO_PROGRESS)
    trust_remote_code: bool = like(TRUST_REMOTE_CODE, help="allow the models' own code to run")

    def loss_weights(self) -> LossWeights:
        """The recipe's weights with the weights and loss settings given here."""
        given = {"hidden": self.hidden_weight, "attention": self.attention_weight, "logits": self.logits_weight,
                 "mlm": self.mlm_weight, "cosine": self.cosine_weight, "relation": self.relation_weight}
        weights = resolve_weights(RECIPES[self.recipe], given, self.temperature)
        weights.logit_positions = self.logit_positions
        weights.relation_heads, weights.relation_layer = self.relation_heads, self.relation_layer
        if weights.relation_heads is not None and weights.relation_heads < 1:
            raise UserError(f"--relation-heads must be at least 1, not {weights.relation_heads}")
        return weights

    def check_student_options(self) -> None:
        """The student options shape a student built here: with --student they are a mistake. (And
        --token-cache must be a folder.)"""
        given = self.shape_given()
        if self.student and given:
            raise UserError(f"--{given.replace('_', '-')} shapes a student built here; with --student {self.student} "
                            "drop it")
        if self.token_cache and Path(self.token_cache).exists() and not Path(self.token_cache).is_dir():
            raise UserError(f"--token-cache {self.token_cache}: not a folder; give a folder (made if missing)")


@dataclass(kw_only=True)
class GeneralSettings(Phase1Settings, Checkpointing):
    """`distil general`'s settings (the command line's options, a `run` config's `general:` section)."""

    layer_map: str | None = like(LAYER_MAP, group=LOSSES)
    save_dtype: str | None = like(SAVE_DTYPE, group=TRAINING)
    eval_every: int = setting(5000, group=TRAINING, help="steps between held-out evaluations")
    save_every: int = setting(5000, advanced=True, group=TRAINING, help="steps between checkpoints")


# ---------------------------------------------------------------------------------------------
# Checks


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher_name: str, student_name: str,
                          teacher_rows: int, student_rows: int) -> None:
    """Teacher and student must give every token the same id (compared in id order)."""
    from polyglot_distil.models.loading import vocab_in_id_order

    t_vocab, s_vocab = vocab_in_id_order(teacher_tokenizer), vocab_in_id_order(student_tokenizer)
    if t_vocab != s_vocab:
        first = next((i for i, (a, b) in enumerate(zip(t_vocab, s_vocab)) if a != b), min(len(t_vocab), len(s_vocab)))
        raise UserError(f"teacher {teacher_name} and student {student_name} have different vocabularies "
                        f"({len(t_vocab):,} and {len(s_vocab):,} tokens, first difference at id {first}); "
                        + _same_vocabulary_fix(teacher_name, student_name))
    if teacher_rows != student_rows:
        raise UserError(f"teacher {teacher_name} has {teacher_rows:,} embedding rows but student {student_name} has "
                        f"{student_rows:,}; " + _same_vocabulary_fix(teacher_name, student_name))


def _same_vocabulary_fix(teacher_name: str, student_name: str) -> str:
    """What to do when the teacher is not the model the student was built from: usually the
    untrimmed model given where the trimmed one was meant; rebuilding the student from it would
    throw the trim away."""
    source = built_from(student_name)
    if source is not None and source != str(teacher_name):
        return f"the student was built from {source}: pass --teacher {source}"
    return ("pass as --teacher the model the student was built from (the trimmed one, if you trimmed), or trim "
            "this teacher with the same counts and languages")


# ---------------------------------------------------------------------------------------------
# Data


def load_blocks(languages: dict, tokenizer, block_size: int, max_lines: int | None, seed: int,
                show_progress: bool | None, cache_dir: str | Path, main: bool = True, barrier=None,
                shared: bool = False) -> dict:
    """{lang: int32 blocks [n, block_size]} from each language's sources, memory-mapped from the
    token cache in `cache_dir` (data/token_cache.py): tokenized once, by the main process, when
    no cache of these sources, this tokenizer and these block settings is there yet. A `shared`
    cache (`--token-cache`) keeps the blocks of other inputs."""

    from polyglot_distil.data.corpus import Caps, ReadStats, iter_language
    from polyglot_distil.data.mlm import write_blocks
    from polyglot_distil.data.token_cache import cached_blocks
    from polyglot_distil.fingerprints import path_fingerprint, tokenizer_json_digest
    from polyglot_distil.progress import progress

    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if first is None or last is None or tokenizer.mask_token_id is None:
        raise UserError("the tokenizer has no [CLS]/[SEP] (or <s>/</s>) and mask tokens, which masked-LM blocks need")
    key = {
        "sources": {lang: [[str(s), None if s.kind == "hf" else path_fingerprint(Path(s.path))] for s in sources]
                    for lang, sources in languages.items()},
        "tokenizer": tokenizer_json_digest(tokenizer),
        "block_size": block_size, "first_id": int(first), "last_id": int(last), "max_lines": max_lines, "seed": seed,
    }

    def write(lang, handle) -> int:
        sources = languages[lang]
        stats = ReadStats()
        where = ", ".join(str(s) for s in sources)
        with progress(total=max_lines, desc=f"tokenize {lang}", unit=" lines", show=show_progress) as bar:
            count, tokens = write_blocks(iter_language(sources, Caps(max_lines=max_lines, seed=seed), stats=stats),
                                         tokenizer, block_size, first, last, handle, progress=bar.update)
        if stats.lines == 0:
            raise UserError(f"no text for language {lang!r}: {where} holds no non-blank lines")
        if count == 0:
            raise UserError(f"language {lang!r}: {where} gives {tokens:,} tokens, less than one block of "
                            f"{block_size}; give more text or a smaller --block-size")
        return count

    return cached_blocks(cache_dir, key, list(languages), write, block_size, main=main, barrier=barrier,
                         prune=not shared)


def split_data(blocks: dict, heldout_blocks: int, batch_size: int, masking, seed: int):
    """(training batches, held-out batches or None) from every language's blocks."""
    from polyglot_distil.data.mlm import LanguageBatches, split_heldout

    if heldout_blocks and heldout_blocks < batch_size:
        raise UserError(f"--heldout-blocks {heldout_blocks} is less than one batch of {batch_size} blocks; "
                        "raise it, or pass 0 for no held-out evaluation")
    train, held = {}, {}
    for lang, lang_blocks in blocks.items():
        if len(lang_blocks) < heldout_blocks + batch_size:
            raise UserError(f"language {lang!r}: {len(lang_blocks)} blocks of text, too few for "
                            f"{heldout_blocks} held-out blocks and one batch of {batch_size}; give more text, "
                            "or lower --heldout-blocks, --batch-size or --block-size")
        train[lang], held[lang] = split_heldout(lang_blocks, heldout_blocks, seed)
    heldout = LanguageBatches(held, batch_size, masking, seed + 1) if heldout_blocks else None
    return LanguageBatches(train, batch_size, masking, seed), heldout


# ---------------------------------------------------------------------------------------------
# Models and loss


def _student_forward(parts, input_ids, attention_mask, logit_rows=None, *, hidden_states: bool, attentions: bool,
                     relation_layer: int | None = None):
    """The trained computation (inside the DDP-wrapped module): the student's outputs, its hidden
    states projected to the teacher's width when it is narrower."""
    from polyglot_distil.models.encoder import encoder_outputs

    out = encoder_outputs(parts["student"], input_ids, attention_mask, hidden_states=hidden_states,
                          attentions=attentions, logit_rows=logit_rows, relation_layer=relation_layer)
    if "projection" in parts:
        project = parts["projection"]
        out["last"] = project(out["last"])
        if out["hidden"] is not None:
            out["hidden"] = tuple(project(h) for h in out["hidden"])
    return out


def _embedding_projection(student, teacher):
    """Linear map student width -> teacher width, least squares between the embedding matrices
    (the inverse of the SVD reduction when the student's embeddings came from one). Where the
    embeddings are not as wide as the hidden states (ALBERT, ELECTRA, RemBERT) nothing relates the
    two widths: the map starts at random."""
    import torch

    source = student.get_input_embeddings().weight.detach().float()
    target = teacher.get_input_embeddings().weight.detach().float()
    widths = (student.config.hidden_size, teacher.config.hidden_size)
    if (source.shape[1], target.shape[1]) != widths:
        return torch.nn.Linear(*widths, bias=False)
    # gelsd (SVD-based) gives the same bits wherever the matrices sit in memory; gelsy, the CPU
    # default, does not: its result moved with the buffers' alignment, so phase 1 with a narrower
    # student was not reproducible from run to run (CUDA has gels only: solved on the CPU)
    solution = torch.linalg.lstsq(source.cpu(), target.cpu(), driver="gelsd").solution  # [H_student, H_teacher]
    projection = torch.nn.Linear(source.shape[1], target.shape[1], bias=False)
    with torch.no_grad():
        projection.weight.copy_(solution.T)
    return projection


def student_module(student, teacher, weights: LossWeights, freeze_embeddings: bool = False):
    """The trained module: the student (its MLM head frozen unless a loss reads logits; its
    embeddings frozen with `freeze_embeddings`) and, for a narrower student, the projection of its
    hidden states. Called as `module(ids, mask, rows)`."""
    import functools

    from polyglot_distil.distill.training import Trainable
    from polyglot_distil.models.encoder import has_mlm_output, mlm_head

    if not (weights.logits or weights.mlm) and has_mlm_output(student):  # the head gets no gradient
        embedding = student.get_input_embeddings().weight
        for module in mlm_head(student):
            for param in module.parameters():
                if param is not embedding:
                    param.requires_grad_(False)
    if freeze_embeddings:  # LightMBERT: the multilingual embeddings (and a head tied to them) stay as they are
        getattr(student.base_model, "embeddings", student.get_input_embeddings()).requires_grad_(False)
    parts = {"student": student}
    if student.config.hidden_size != teacher.config.hidden_size and (weights.hidden or weights.cosine):
        parts["projection"] = _embedding_projection(student, teacher)
    last = student.config.num_hidden_layers - 1
    return Trainable(parts, functools.partial(_student_forward, hidden_states=weights.hidden > 0,
                                              attentions=weights.attention > 0,
                                              relation_layer=last if weights.relation else None))


def logit_rows(batch: dict, weights: LossWeights):
    """Where the MLM head runs: every token for the logit loss (unless restricted to the masked
    ones), the masked ones for the MLM loss alone, nowhere otherwise (bool [B, L] or None)."""
    from polyglot_distil.data.mlm import IGNORE_INDEX

    if weights.logits and weights.logit_positions == "all":
        return batch["attention_mask"].bool()
    return batch["labels"] != IGNORE_INDEX if weights.logits or weights.mlm else None


def teacher_outputs(teacher, batch: dict, weights: LossWeights, rows, layer_map: list[int] | None = None) -> dict:
    """The teacher's forward, no gradients, returning only what the enabled losses read: with
    `layer_map`, only the hidden states and attention maps of the layers it maps to (as {k: tensor});
    the other layers' are freed as the forward goes."""
    import torch

    from polyglot_distil.models.encoder import encoder_outputs
    from polyglot_distil.models.student import hidden_state_pairs

    hidden, attentions = weights.hidden > 0, weights.attention > 0
    if layer_map is not None:
        hidden = [k for _, k in hidden_state_pairs(layer_map)] if hidden else False
        attentions = list(layer_map) if attentions else False

    with torch.no_grad():
        return encoder_outputs(teacher, batch["input_ids"], batch["attention_mask"], hidden_states=hidden,
                               attentions=attentions, logit_rows=rows if weights.logits else None,
                               relation_layer=weights.relation_layer if weights.relation else None)


def distillation_loss(model, teacher, batch: dict, weights: LossWeights, layer_map: list[int]):
    """One batch's (weighted loss, {term: scalar}); `model` is the (prepared) `student_module`."""
    rows = logit_rows(batch, weights)
    s = model(batch["input_ids"], batch["attention_mask"], rows)
    t = teacher_outputs(teacher, batch, weights, rows, layer_map)
    terms = distillation_terms(s, t, batch["attention_mask"], weights, layer_map,
                               mlm_labels=batch["labels"][rows] if weights.mlm else None, counts=batch.get("counts"))
    return weighted_sum(terms, weights), terms


def resolve_relation(weights: LossWeights, teacher_config, student_config) -> None:
    """Check the relation loss's teacher layer and relation heads against the models, and fill in
    their defaults (the teacher's last layer, the teacher's attention heads)."""
    layers = teacher_config.num_hidden_layers
    if weights.relation_layer is None:
        weights.relation_layer = layers - 1
    if not 0 <= weights.relation_layer < layers:
        raise UserError(f"--relation-layer {weights.relation_layer}: teacher layer {weights.relation_layer} does "
                        f"not exist (the teacher has {layers} layers, numbered 0 to {layers - 1})")
    given = weights.relation_heads is not None
    heads = weights.relation_heads if given else teacher_config.num_attention_heads
    widths = (teacher_config.hidden_size, student_config.hidden_size)
    if any(width % heads for width in widths):
        import math

        common = math.gcd(*widths)
        divisors = ", ".join(str(d) for d in range(1, common + 1) if common % d == 0)
        what = f"--relation-heads {heads}" if given else f"the default --relation-heads {heads} (the teacher's heads)"
        raise UserError(f"{what} does not divide both hidden sizes (teacher {widths[0]}, student {widths[1]}); "
                        f"pass --relation-heads with one of: {divisors}")
    weights.relation_heads = heads


@dataclass
class Phase1Inputs:
    """What phase 1 loads once: the models, the tokenizer and the text's batches."""

    teacher: object
    student: object
    tokenizer: object
    languages: dict
    layer_map: list[int]  # from --layer-map, or BiStil's default
    train_data: object
    heldout: object | None
    save_dtype: str | None


def layer_map_for(layer_map: str | None, teacher, student) -> list[int]:
    """`--layer-map` (numbers, or a `distil search-map` output), checked; default: BiStil's."""
    from polyglot_distil.models.student import check_layers, default_layer_map, parse_layers

    t_layers, s_layers = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    layers = parse_layers(layer_map, "--layer-map") or default_layer_map(t_layers, s_layers)
    check_layers(layers, t_layers, s_layers, "--layer-map")
    return layers


def load_inputs(options: Phase1Settings, weights: LossWeights, settings, accelerator, cache_dir: Path | None = None,
                layer_map: str | None = None, save_dtype: str | None = None) -> Phase1Inputs:
    """Load teacher and student (built here when `options.student` is not given) and tokenize the
    text into `--token-cache`, else `cache_dir`, else OUT/cache/; check that they go together.
    `layer_map` and `save_dtype` as `distil general`'s options (None: BiStil's map, the models' dtype)."""
    import torch
    from transformers import AutoConfig

    from polyglot_distil.data.corpus import group_lang_specs
    from polyglot_distil.data.mlm import Masking
    from polyglot_distil.distill.training import CACHE
    from polyglot_distil.models.encoder import has_mlm_output
    from polyglot_distil.models.loading import check_tokenizer_fits, encoder_class_for, load_model, load_tokenizer, \
        same_tokenizer_files, saved_dtype
    from polyglot_distil.models.student import make_student, planned_config

    languages = group_lang_specs(options.lang)
    # output_attentions needs the eager attention; otherwise the fast (sdpa) path.
    attn = "eager" if weights.attention > 0 else "sdpa"
    remote = options.trust_remote_code
    teacher_config = load_model(options.teacher, AutoConfig, trust_remote_code=remote)
    # on the configurations: a wrong setting answers before the models load
    student_config = load_model(options.student, AutoConfig, trust_remote_code=remote) if options.student \
        else planned_config(teacher_config, options.spec(options.seed))
    if weights.relation:
        resolve_relation(weights, teacher_config, student_config)
    longest = max_positions(student_config)
    if not 3 <= options.block_size <= longest:
        raise UserError(f"--block-size {options.block_size}: the models take blocks of 3 to {longest} tokens")
    # float32 weights whatever the checkpoints' dtype: bf16/fp16 only through --mixed-precision's autocast
    teacher = load_model(options.teacher, encoder_class_for(teacher_config), trust_remote_code=remote,
                         attn_implementation=attn, dtype=torch.float32)
    dtype = save_dtype or saved_dtype(teacher_config)
    if (weights.logits or weights.mlm) and not has_mlm_output(teacher):
        raise UserError(f"teacher {options.teacher} has no masked-LM head (an embedding model?): the logit and MLM losses "
                        "need one; distil with the hidden and attention losses (--recipe bistil)")
    tokenizer = load_tokenizer(options.teacher, remote)
    check_tokenizer_fits(teacher, tokenizer, options.teacher)
    if options.student:
        student = load_model(options.student, encoder_class_for(student_config), trust_remote_code=remote,
                             attn_implementation=attn, dtype=torch.float32)
        dtype = save_dtype or saved_dtype(student_config)
        if (weights.logits or weights.mlm) and not has_mlm_output(student):
            raise UserError(f"student {options.student} has no masked-LM head: the logit and MLM losses need one")
        same_files = student_config.model_type == teacher_config.model_type and \
            same_tokenizer_files(options.teacher, options.student)  # the same tokenizer, not loaded twice
        check_same_vocabulary(tokenizer, tokenizer if same_files else load_tokenizer(options.student, remote),
                              options.teacher, options.student, teacher.get_input_embeddings().weight.shape[0],
                              student.get_input_embeddings().weight.shape[0])
    else:
        student, _ = make_student(teacher, tokenizer, options.spec(options.seed), attn_implementation=attn)
    layer_map = layer_map_for(layer_map, teacher, student)
    if weights.attention and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise UserError(f"the attention loss compares heads one to one, but the student has "
                        f"{student.config.num_attention_heads} and the teacher {teacher.config.num_attention_heads}; "
                        "pass --attention-weight 0")
    masking = Masking.for_tokenizer(tokenizer, student.get_input_embeddings().weight.shape[0], options.mask_probability)
    shared = options.token_cache
    blocks = load_blocks(languages, tokenizer, options.block_size, options.max_lines, options.seed,
                         False if options.no_progress or not accelerator.is_main_process else None,
                         shared or cache_dir or Path(options.out) / CACHE, accelerator.is_main_process,
                         accelerator.wait_for_everyone, shared=bool(shared))
    train_data, heldout = split_data(blocks, options.heldout_blocks, settings.batch_size, masking, options.seed)
    teacher.eval().requires_grad_(False).to(accelerator.device)
    return Phase1Inputs(teacher, student, tokenizer, languages, layer_map, train_data, heldout, dtype)


# ---------------------------------------------------------------------------------------------
# The phase


class GeneralPhase(TrainingPhase):
    """Phase 1 on the training loop: the student imitates the frozen teacher on masked blocks of
    each language's text; the held-out blocks' loss (`eval_loss`) picks OUT/best/."""

    def __init__(self, options: Phase1Settings, weights: LossWeights, settings, layer_map: str | None = None,
                 save_dtype: str | None = None):
        self.options, self.weights, self.settings = options, weights, settings
        self.layer_map_given, self.save_dtype_given = layer_map, save_dtype  # `distil general`'s options

    def load(self, accelerator) -> None:
        """Teacher, student and text (`load_inputs`); the student trains with --layer-map's mapping."""
        inputs = load_inputs(self.options, self.weights, self.settings, accelerator, layer_map=self.layer_map_given,
                             save_dtype=self.save_dtype_given)
        self.train_on(inputs, inputs.layer_map)

    def train_on(self, inputs: Phase1Inputs, layer_map: list[int], student=None) -> None:
        """Train `inputs`' student (or `student`, a copy of it) with `layer_map`."""
        self.inputs, self.layer_map = inputs, layer_map
        self.model = student_module(student if student is not None else inputs.student, inputs.teacher, self.weights,
                                    self.options.freeze_embeddings)
        self.train_data = inputs.train_data
        self.evaluates = inputs.heldout is not None

    # The step: each loss averages over the global batch's tokens (masked ones for the MLM loss);
    # the student's forward and the teacher's, then each enabled term (`distillation_loss`); the
    # loss and every term are logged.

    def batch_counts(self, batch: dict) -> dict[str, float]:
        return batch_counts(batch)

    def loss(self, model, batch: dict):
        return distillation_loss(model, self.inputs.teacher, batch, self.weights, self.layer_map)

    def evaluate(self, model, accelerator) -> dict[str, float]:
        """The loss and its terms on the held-out blocks: {"eval_loss", "eval_hidden", ...}."""
        from polyglot_distil.distill.training import mean_over_batches

        return mean_over_batches(model, self.inputs.heldout, self.loss, accelerator, self.settings.grad_accum,
                                 batch_counts=self.batch_counts)

    def save(self, trained, folder: Path) -> None:
        """The student (without the projection), the teacher's pretrained pooler, the tokenizer and
        distillation.json."""
        from polyglot_distil.models.checkpoint import carry_body_tensors
        from polyglot_distil.models.loading import copy_tokenizer, save_pretrained_as

        options, inputs = self.options, self.inputs
        save_pretrained_as(trained.parts["student"], folder, inputs.save_dtype)
        carry_body_tensors(options.student or options.teacher, folder)  # the pretrained pooler, which a masked-LM class drops
        copy_tokenizer(options.student or options.teacher, folder, inputs.tokenizer)
        info = {"teacher": str(options.teacher), "student": options.student, "languages": list(inputs.languages),
                "layer_map": self.layer_map, "weights": asdict(self.weights)}
        (folder / "distillation.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line


def run_distil_general(options: GeneralSettings) -> dict:
    """The `distil general` stage: phase 1's run, then its last metrics; returns the run's summary."""
    from polyglot_distil.data.corpus import group_lang_specs
    from polyglot_distil.models.student import layer_map_record
    from polyglot_distil.distill.training import train

    options.check_student_options()
    weights = options.loss_weights()
    languages = group_lang_specs(options.lang)
    if options.heldout_blocks < 0:
        raise UserError(f"--heldout-blocks must be 0 or more, not {options.heldout_blocks}")
    if not 0 < options.mask_probability < 1:
        raise UserError(f"--mask-probability must be between 0 and 1, not {options.mask_probability}")
    settings = options.train_settings(
        options.out, options.steps, eval_every=options.eval_every, save_every=options.save_every,
        keep_checkpoints=options.keep_checkpoints, resume=options.resume, overwrite=options.overwrite,
        weight_decay=options.weight_decay, no_progress=options.no_progress)
    run_config = {
        "phase": "general", "teacher": str(options.teacher), "student": options.student,
        "student_spec": None if options.student else asdict(options.spec(options.seed)),
        "languages": {lang: [str(s) for s in sources] for lang, sources in languages.items()},
        "max_lines": options.max_lines, "block_size": options.block_size, "mask_probability": options.mask_probability,
        "heldout_blocks": options.heldout_blocks, "weights": asdict(weights),
        "layer_map": layer_map_record(options.layer_map),
        **({"freeze_embeddings": True} if options.freeze_embeddings else {}),
        **({"save_dtype": options.save_dtype} if options.save_dtype else {}),
    }
    result = train(settings, run_config, GeneralPhase(options, weights, settings, options.layer_map, options.save_dtype))
    if not result.is_main_process:
        return result.summary()
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.last_train.items() if k in ("loss", *TERMS))
    best = f"; best eval_loss {result.best_value:.4g} at step {result.best_step}" if result.best_step else ""
    return {**result.summary(), "lines": [f"step {result.step}: {summary}{best}", f"wrote {result.final_dir}"]}
