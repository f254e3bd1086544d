"""Which teacher layer should each student layer imitate? A search over layer mappings on a proxy
(after the GA layer-mapping search of Li et al., 2021: short distillation runs rank the mappings).

    polyglot-distil distil search-map --teacher out/trimmed --student out/student \
        --lang en=corpora/en/sample.txt --lang fr=corpora/fr/sample.txt --out out/search
    polyglot-distil distil general ... --layer-map out/search          # the best mapping found
    polyglot-distil distil search-map ... --candidates "1,3,5,7,9,11;0,2,4,6,8,11"   # given ones only

Every candidate mapping gets one short phase-1 run (`--steps`, on a `--max-lines` sample of each
language's text, the recipe's losses with that mapping, the same seed and batches), through phase
1's own training loop. A student built here from the teacher's layers (no `--student`, no
`--init-layers`, `--init teacher`) starts, for each candidate, from the teacher layers it is mapped
to, as `student --init-layers MAP` would build it; a given `--student` (or another `--init`)
starts every candidate from the same weights. The runs are ranked by one criterion that
does not depend on the mapping (the recipe's own loss does: a mapping onto lower teacher layers is
easier to imitate, not better): on the held-out blocks after the run,

    hidden    MSE between the student's and the teacher's last hidden states (the default when
              the student is as wide as the teacher)
    relation  MiniLMv2's q-q, k-k and v-v relation KL between the teacher's last layer and the
              student's last layer (the default for a narrower student: no projection needed)

Candidates: the strictly increasing mappings of the student's layers onto the teacher's. When
there are at most `--budget` of them, every one is tried; otherwise a genetic search tries
`--budget` of them: a first population of the BiStil mapping (2j+1), the top and bottom layers
and random ones, then children of the best half (position-wise crossover, a mutation moving one
layer by one), each mapping tried once. `--candidates` tries exactly the mappings given.

Output: OUT/layer_map.txt (the best mapping: `--layer-map OUT` or `--layer-map OUT/layer_map.txt`
reads it), OUT/search.json (every candidate's held-out criterion and phase-1 loss, in the order
tried), OUT/candidates/MAP/ (each run's metrics; its models are deleted once it is scored) and
OUT/cache/ (the tokenized text, shared by the runs). An interrupted search continues with
`--resume`: scored candidates are not run again.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from polyglot_distil.distill.general import DATA, GeneralPhase, Phase1Settings
from polyglot_distil.distill.settings import TRAINING
from polyglot_distil.errors import UserError
from polyglot_distil.options import FLAG, OVERWRITE, WRITES, like, setting

CRITERIA = ("hidden", "relation")


# ---------------------------------------------------------------------------------------------
# The search, on any scoring function


def increasing_mappings(teacher_layers: int, student_layers: int) -> int:
    """How many strictly increasing mappings there are: C(teacher, student)."""
    return math.comb(teacher_layers, student_layers)


def _repair(mapping: list[int], teacher_layers: int, rng: random.Random) -> tuple[int, ...]:
    """A strictly increasing mapping close to `mapping`: its distinct layers, topped up with
    random unused ones."""
    kept = sorted(set(mapping))
    unused = [layer for layer in range(teacher_layers) if layer not in kept]
    while len(kept) < len(mapping):
        kept.append(unused.pop(rng.randrange(len(unused))))
    return tuple(sorted(kept))


def _child(a: tuple, b: tuple, teacher_layers: int, rng: random.Random) -> tuple[int, ...]:
    """Position-wise crossover of two mappings, then (half the time) one layer moved by one."""
    child = [rng.choice(pair) for pair in zip(a, b)]
    if rng.random() < 0.5:
        j = rng.randrange(len(child))
        child[j] = min(teacher_layers - 1, max(0, child[j] + rng.choice((-1, 1))))
    return _repair(child, teacher_layers, rng)


def _random_mapping(teacher_layers: int, student_layers: int, rng: random.Random) -> tuple[int, ...]:
    return tuple(sorted(rng.sample(range(teacher_layers), student_layers)))


def search_mappings(score: Callable[[tuple[int, ...]], float], teacher_layers: int, student_layers: int,
                    budget: int = 12, population: int = 6, seed: int = 0,
                    candidates: list[tuple[int, ...]] | None = None) -> tuple[tuple[int, ...], dict]:
    """(the mapping of lowest `score`, {mapping: score} in the order tried). `score` is called once
    per mapping. Exhaustive when `candidates` are given or when all increasing mappings fit in
    `budget`; a genetic search of `budget` evaluations otherwise."""
    from polyglot_distil.models.student import default_layer_map

    history: dict[tuple[int, ...], float] = {}

    def evaluate(mapping) -> None:
        mapping = tuple(mapping)
        if mapping not in history:
            history[mapping] = float(score(mapping))

    rng = random.Random(seed)
    if candidates is not None:
        for mapping in candidates:
            evaluate(mapping)
    elif increasing_mappings(teacher_layers, student_layers) <= budget:
        for mapping in itertools.combinations(range(teacher_layers), student_layers):
            evaluate(mapping)
    else:
        first = [tuple(default_layer_map(teacher_layers, student_layers)),
                 tuple(range(teacher_layers - student_layers, teacher_layers)), tuple(range(student_layers))]
        while len(set(first)) < min(population, budget):
            first.append(_random_mapping(teacher_layers, student_layers, rng))
        for mapping in list(dict.fromkeys(first))[:min(population, budget)]:
            evaluate(mapping)
        while len(history) < budget:
            ranked = sorted(history, key=history.get)
            parents = ranked[:max(2, len(ranked) // 2)]
            for _ in range(100):
                a, b = rng.sample(parents, 2)
                child = _child(a, b, teacher_layers, rng)
                if child not in history:
                    break
            else:  # the best half's neighbourhood is used up: a new random one
                while child in history:
                    child = _random_mapping(teacher_layers, student_layers, rng)
            evaluate(child)
    if not history:
        raise UserError("--candidates is empty: give one or more mappings, e.g. '1,3,5;0,2,5'")
    best = min(history, key=history.get)
    return best, history


def parse_candidates(text: str | None) -> list[tuple[int, ...]] | None:
    """`"1,3,5;0,2,5"` -> [(1, 3, 5), (0, 2, 5)]."""
    from polyglot_distil.models.student import parse_layers

    if text is None:
        return None
    return [tuple(parse_layers(part, "--candidates")) for part in text.split(";") if part.strip()]


def label(mapping) -> str:
    return "-".join(str(layer) for layer in mapping)


# ---------------------------------------------------------------------------------------------
# The criterion


def criterion_loss(criterion: str, teacher, relation):
    """`compute_loss(model, batch)` -> (held-out criterion, {}) for `mean_over_batches`: the
    student's last hidden state (projected when narrower) against the teacher's, or the relations
    of their last layers (`relation`: resolved general.LossWeights)."""
    from polyglot_distil.distill import losses
    from polyglot_distil.distill.general import _student_forward
    from polyglot_distil.models.encoder import encoder_outputs

    def compute(model, batch):
        parts = getattr(model, "module", model).parts
        ids, mask = batch["input_ids"], batch["attention_mask"]
        student_last = parts["student"].config.num_hidden_layers - 1
        s = _student_forward(parts, ids, mask, None, hidden_states=False, attentions=False,
                             relation_layer=student_last if criterion == "relation" else None)
        t = encoder_outputs(teacher, ids, mask, relation_layer=relation.relation_layer if criterion == "relation"
                            else None)
        if criterion == "hidden":
            return losses.hidden_mse([s["last"]], [t["last"]], mask, batch.get("counts", {}).get("tokens")), {}
        return losses.attention_relation_kl(s["qkv"], t["qkv"], mask, relation.relation_heads,
                                            batch.get("counts", {}).get("tokens")), {}

    return compute


def resolve_criterion(criterion: str | None, relation_heads: int | None, weights, teacher_config,
                      student_config) -> tuple[str, object]:
    """The criterion (default: hidden for a student as wide as the teacher, relation otherwise),
    checked against the models, and the relation settings it uses."""
    from polyglot_distil.distill.general import LossWeights, resolve_relation

    narrower = student_config.hidden_size != teacher_config.hidden_size
    criterion = criterion or ("relation" if narrower else "hidden")
    if criterion == "hidden" and narrower and not (weights.hidden or weights.cosine):
        raise UserError(f"--criterion hidden compares last hidden states, but the student ({student_config.hidden_size}"
                        f" wide) is narrower than the teacher ({teacher_config.hidden_size}) and the recipe has no "
                        "hidden or cosine loss to learn a projection; use --criterion relation")
    relation = LossWeights(hidden=0, attention=0, relation=1, relation_heads=relation_heads)
    if criterion == "relation":
        resolve_relation(relation, teacher_config, student_config)  # the teacher's last layer
    return criterion, relation


# ---------------------------------------------------------------------------------------------
# The command


def _processes():
    """(is this the main process, a barrier) under `accelerate launch`; (True, a no-op) alone."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return True, lambda: None
    import torch
    from accelerate import PartialState

    # gloo on a machine without GPUs, as the training loop's Accelerator joins it
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.is_main_process, state.wait_for_everyone


SEARCH = "search"


@dataclass(kw_only=True)
class SearchMapSettings(Phase1Settings):
    """`distil search-map`'s settings: phase 1's (the candidate runs are phase-1 runs), with
    shorter defaults, and the search's."""

    out: str = setting(role=WRITES, help="output folder (layer_map.txt, search.json, each candidate's metrics)")
    block_size: int = setting(128, group=DATA, help="tokens per block, [CLS] and [SEP] included")
    max_lines: int | None = setting(2000, group=DATA,
                                    help="lines read per language (a seeded sample; the search needs a small one)")
    heldout_blocks: int = setting(16, group=DATA, help="blocks per language the candidates are ranked on")
    steps: int = setting(100, group=TRAINING, help="optimizer steps of each candidate's run")
    candidates: str | None = setting(None, group=SEARCH,
                                     help="try exactly these mappings, separated by ';' (e.g. '1,3,5;0,2,5'); default: "
                                          "all increasing mappings, or a genetic search when there are more than "
                                          "--budget")
    budget: int = setting(12, group=SEARCH, help="candidate runs at most (the genetic search's evaluations)")
    population: int = setting(6, group=SEARCH, help="the genetic search's first population")
    criterion: str | None = setting(None, choices=CRITERIA, group=SEARCH,
                                    help="held-out ranking: last hidden-state MSE (default for a student as wide as "
                                         "the teacher) or the last layers' MiniLMv2 relation KL (default for a "
                                         "narrower one)")
    resume: bool = setting(False, kind=FLAG, group=SEARCH,
                           help="continue the search in --out: scored candidates are not run again")
    overwrite: bool = like(OVERWRITE, group=SEARCH, help="delete an existing --out (its token cache is kept) and "
                                                         "start over")

    def __post_init__(self):
        for name in ("budget", "population", "steps"):
            if getattr(self, name) < (2 if name == "population" else 1):
                raise UserError(f"--{name} must be at least {2 if name == 'population' else 1}, not "
                                f"{getattr(self, name)}")
        if self.heldout_blocks < 1:
            raise UserError(f"--heldout-blocks must be at least 1: the candidates are ranked on held-out text, not "
                            f"{self.heldout_blocks}")


# ---------------------------------------------------------------------------------------------
# The candidate runs


def candidate_settings(options: SearchMapSettings, folder: Path):
    """The `TrainSettings` of one candidate's run in `folder`: --steps, evaluated and checkpointed
    once, at the end."""
    return options.train_settings(folder, options.steps, eval_every=options.steps, save_every=options.steps,
                                  keep_checkpoints=1, overwrite=True, weight_decay=options.weight_decay,
                                  no_progress=options.no_progress)


class MapSearch:
    """One search's state, shared by its candidate runs: the options and the criterion, the models
    and text (loaded by the first run that needs them), and every candidate's result, in the
    order tried (`tried`). `score(mapping)` is the search's scoring function."""

    def __init__(self, options: SearchMapSettings, weights, criterion: str, relation, coupled: bool, out: Path,
                 record: dict, main: bool):
        self.options, self.weights, self.criterion, self.relation = options, weights, criterion, relation
        self.coupled = coupled  # the student starts from the teacher layers it is mapped to
        self.out, self.record, self.main = out, record, main
        self.loaded = None  # general.Phase1Inputs, once loaded
        self.tried: list[dict] = []

    def score(self, mapping: tuple[int, ...]) -> float:
        """The held-out criterion of `mapping`'s run (read back when it was scored before)."""
        folder = self.out / "candidates" / label(mapping)
        done = folder / "result.json"
        result = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else self.run(mapping, folder)
        self.tried.append(result)
        if self.main:
            print(f"{label(mapping):>24}  {self.criterion} {result['criterion']:.5g}  (phase-1 loss "
                  f"{result['eval_loss']:.4g})", file=sys.stderr, flush=True)
        return result["criterion"]

    def run(self, mapping: tuple[int, ...], folder: Path) -> dict:
        """Train the candidate in `folder`, keep its result.json and metrics, delete its models."""
        from polyglot_distil.distill.training import train
        from polyglot_distil.outputs import replace_text

        settings = candidate_settings(self.options, folder)
        run = train(settings, {"phase": "general", "search": self.record, "layer_map": list(mapping)},
                    CandidateRun(self, mapping, settings))
        result = {"layer_map": list(mapping), "criterion": run.last_eval["criterion_loss"],
                  "eval_loss": run.last_eval["eval_loss"], "train_loss": run.last_train.get("loss")}
        if run.is_main_process:
            for models in ("checkpoints", "best", "final"):  # scored: the short run's models are not kept
                shutil.rmtree(folder / models, ignore_errors=True)
            replace_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
        return result

    def inputs(self, settings, accelerator):
        """The models and text, loaded once for every candidate (the text's blocks in --token-cache
        when given, else OUT/cache/)."""
        from polyglot_distil.distill.general import load_inputs
        from polyglot_distil.distill.training import CACHE

        if self.loaded is None:
            self.loaded = load_inputs(self.options, self.weights, settings, accelerator, cache_dir=self.out / CACHE)
        return self.loaded

    def student_for(self, mapping: tuple[int, ...], inputs):
        """The student a candidate starts from: built from the teacher layers `mapping` names
        (coupled), else a copy of the one student."""
        import copy

        from polyglot_distil.models.student import make_student

        if not self.coupled:
            return copy.deepcopy(inputs.student)
        options = self.options
        student, _ = make_student(inputs.teacher, inputs.tokenizer,
                                  replace(options.spec(options.seed), init_layers=list(mapping)),
                                  attn_implementation=inputs.student.config._attn_implementation)
        return student


class CandidateRun(GeneralPhase):
    """One candidate's short phase-1 run: phase 1's step with the candidate's mapping; its
    evaluation adds the held-out criterion (`criterion_loss`), which picks best/ and ranks it."""

    best_metric = "criterion_loss"

    def __init__(self, search: MapSearch, mapping: tuple[int, ...], settings):
        super().__init__(search.options, search.weights, settings)
        self.search, self.mapping = search, mapping

    def load(self, accelerator) -> None:
        inputs = self.search.inputs(self.settings, accelerator)
        self.train_on(inputs, list(self.mapping), self.search.student_for(self.mapping, inputs))
        self.criterion = criterion_loss(self.search.criterion, inputs.teacher, self.search.relation)

    def evaluate(self, model, accelerator) -> dict[str, float]:
        """Phase 1's held-out loss and terms, and the criterion: {"eval_loss", ..., "criterion_loss"}."""
        from polyglot_distil.distill.training import mean_over_batches

        metrics = super().evaluate(model, accelerator)
        metrics.update(mean_over_batches(model, self.inputs.heldout, self.criterion, accelerator,
                                         self.settings.grad_accum, prefix="criterion_",
                                         batch_counts=self.batch_counts))
        return metrics


# ---------------------------------------------------------------------------------------------
# The stage


def run_search_map(options: SearchMapSettings) -> dict:
    """The `distil search-map` stage: short phase-1 runs ranked; writes layer_map.txt; returns the ranking."""
    from transformers import AutoConfig

    from polyglot_distil.distill.training import CACHE
    from polyglot_distil.fingerprints import run_config_hash
    from polyglot_distil.models.families import family_of
    from polyglot_distil.models.loading import load_model
    from polyglot_distil.models.student import LAYER_MAP_FILE, check_layers, default_layer_map, planned_config
    from polyglot_distil.outputs import MARKER, check_writable, drop_aside, put_back, release_lock, replace_text, \
        set_aside

    options.check_student_options()
    weights = options.loss_weights()
    candidates = parse_candidates(options.candidates)
    remote = options.trust_remote_code
    teacher_config = load_model(options.teacher, AutoConfig, trust_remote_code=remote)
    student_config = (load_model(options.student, AutoConfig, trust_remote_code=remote) if options.student
                      else planned_config(teacher_config, options.spec(options.seed)))
    t_layers, s_layers = teacher_config.num_hidden_layers, student_config.num_hidden_layers
    for mapping in candidates or []:
        check_layers(list(mapping), t_layers, s_layers, "--candidates")
    criterion, relation = resolve_criterion(options.criterion, options.relation_heads, weights, teacher_config,
                                            student_config)
    # the student starts from the teacher layers it is mapped to (not ALBERT's: one shared layer)
    coupled = (not options.student and options.init_layers is None and options.init == "teacher"
               and not family_of(teacher_config).shared_layers)

    out = Path(options.out)
    candidate_settings(options, out / "candidates").check()  # before anything is written
    # Under `accelerate launch` every process runs every candidate (the training loop shares each
    # run out); every process checks OUT before the main one writes; only the main one writes.
    main, barrier = _processes()
    search = {"teacher": str(options.teacher), "student": options.student, "student_spec": None if options.student else
              str(options.spec(options.seed)), "languages": options.lang, "max_lines": options.max_lines,
              "block_size": options.block_size, "heldout_blocks": options.heldout_blocks, "steps": options.steps,
              "batch_size": options.batch_size, "lr": options.lr, "seed": options.seed, "weights": str(weights),
              "criterion": criterion, "init_from_mapping": coupled, "budget": options.budget,
              "population": options.population, "candidates": candidates}
    record = out / "search_config.json"
    if options.resume:
        if not record.is_file():
            raise UserError(f"--resume: {out} holds no search (no {record.name}); drop --resume")
        if json.loads(record.read_text(encoding="utf-8"))["hash"] != run_config_hash(search):
            raise UserError(f"--resume: the search in {out} was made with other options; rerun with its options, or "
                            "start over with --overwrite")
        check_writable(out, overwrite=True)
    else:
        check_writable(out, options.overwrite)
    barrier()
    replaced = None
    if main and not options.resume:
        if out.exists() and any(item.name != CACHE for item in out.iterdir()):
            # the old search stays whole, aside, until this one is complete; the token cache is keyed
            # by its inputs: kept
            replaced = set_aside(out, keep=[CACHE])
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"written_by": "polyglot-distil"}) + "\n", encoding="utf-8")
        replace_text(record, json.dumps({"hash": run_config_hash(search), "search": search}, indent=2) + "\n")
    barrier()

    runs = MapSearch(options, weights, criterion, relation, coupled, out, search, main)
    space = increasing_mappings(t_layers, s_layers)
    how = (f"{len(candidates)} given mappings" if candidates is not None else
           f"all {space} increasing mappings" if space <= options.budget else
           f"a genetic search over {options.budget} of {space:,} increasing mappings")
    if main:
        print(f"search: {how}, {options.steps} steps each; ranked by held-out {criterion}", file=sys.stderr,
              flush=True)
    try:
        best, history = search_mappings(runs.score, t_layers, s_layers, options.budget, options.population,
                                        options.seed, candidates)
    except BaseException:
        if replaced is not None:  # the old search comes back; the unfinished new one goes
            put_back(out, replaced, keep=[CACHE])
        elif main and not options.resume and not any(out.glob("candidates/*/result.json")):  # nothing worth keeping
            shutil.rmtree(out, ignore_errors=True)
        raise
    summary = {"best": list(best), "criterion": criterion, "best_value": history[best],
               "default": None, "tried": runs.tried}
    default = tuple(default_layer_map(t_layers, s_layers))
    if default in history:
        summary["default"] = {"layer_map": list(default), "value": history[default]}
    if not main:
        barrier()  # the main process has written the results
        return summary
    replace_text(out / "search.json", json.dumps(summary, indent=2) + "\n")
    replace_text(out / LAYER_MAP_FILE, ",".join(str(layer) for layer in best) + "\n")
    if replaced is not None:
        drop_aside(replaced)
    release_lock(out)
    barrier()
    versus = (f" (the default {label(default)}: {history[default]:.5g})" if default in history and default != best
              else " (the default mapping)" if default == best else "")
    init = f"polyglot-distil student ... --init-layers {','.join(map(str, best))}, then " if coupled else ""
    return {**summary, "lines": [
        f"best mapping {','.join(map(str, best))}: held-out {criterion} {history[best]:.5g}{versus}",
        f"wrote {out / LAYER_MAP_FILE}; use it with: {init}polyglot-distil distil general ... --layer-map {out}"]}
