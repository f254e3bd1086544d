"""One config, one command: the whole pipeline.

    polyglot-distil run configs/mbert-en-sw-bistil.yaml
    polyglot-distil run configs/demo.yaml general.steps=20 --from general
    polyglot-distil run configs/mbert-en-fr-trim.yaml --only trim
    polyglot-distil run configs/demo.yaml "stages=[count,trim,search,student,general]"   # a searched mapping

A YAML file describes the base model, the languages and their corpora, and one section per
stage. Stages run in order -- count, trim, verify, student, general, finetune, task, eval --
each into its own folder under `run_dir` with a completion marker (`DONE.json`); a re-run skips
completed stages, and an interrupted training stage resumes from its last checkpoint.

One stage runs only when `stages` names it: search (`distil search-map`, between verify and
student). Its students have the student section's shape, and its short runs use the general
section's recipe and loss options unless the search section sets them; the mapping it finds
becomes the student's `--init-layers` and the `--layer-map` of phases 1 and 2.

A stage's section holds that stage's command-line options, written as YAML (`steps: 200`
for `--steps 200`, `keep_chars: true` for `--keep-chars`). They are validated against the
command's own parser before anything runs, so a config and the command line cannot drift
apart; the paths that connect stages (`--teacher`, `--counts`, `--out`, ...) are set by the
pipeline and may not be given. `key=value` arguments override any field
(`trim.min_line_share=1e-4`, `languages.target=sw`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from polyglot_distil.errors import UserError
from polyglot_distil.fingerprints import argv_hash, changed_inputs, input_fingerprints
from polyglot_distil.options import FLAG, NO_RESULT, POSITIONAL, Command, Option, exit_status, like, setting
from polyglot_distil.outputs import hold_lock, lock_path, release_lock, replace_text, wait_visible
from polyglot_distil.tables import text_table

STAGES = ("count", "trim", "verify", "search", "student", "general", "finetune", "task", "eval")
OPTIONAL = ("search",)  # run only when `stages` names them
DEFAULT_STAGES = tuple(stage for stage in STAGES if stage not in OPTIONAL)
# The search's students take the student section's shape; its short runs the general section's
# recipe (the search section may set these), so that the proxy is the phase 1 that follows.
SEARCH_FROM_STUDENT = ("layers", "init", "hidden_size", "intermediate_size", "heads", "dropout", "importance_text",
                       "importance_lines")
SEARCH_FROM_GENERAL = ("recipe", "hidden_weight", "attention_weight", "logits_weight", "mlm_weight", "cosine_weight",
                       "relation_weight", "temperature", "logit_positions", "relation_heads", "relation_layer",
                       "mask_probability", "block_size", "freeze_embeddings", "mixed_precision")
# What the search decides, which the other sections may then not set.
SET_BY_SEARCH = (("student", "init_layers"), ("general", "layer_map"), ("task", "layer_map"))
TOP_LEVEL = {
    "run_dir": "folder that holds every stage's output",
    "model": "base model: hub name or local folder",
    "languages": "mapping with 'source' and 'target' language codes",
    "corpora": "mapping language -> list of sources (files, hf:..., manifests)",
    "heldout": "mapping language -> list of held-out sources for verify (default: the corpora)",
    "task_data": "mapping with 'train' and 'dev' NLI sources (English)",
    "eval_data": "folder of {split}-{lang}.tsv XNLI files (omit for facebook/xnli from the hub)",
    "stages": f"list of stages to run, in order (default: {', '.join(DEFAULT_STAGES)}; add search for a searched "
              "layer mapping)",
    "trust_remote_code": "true to let model code from the hub run (default false)",
    **{stage: f"options of the {stage} stage" for stage in STAGES},
}
NEEDS = {"count": (), "trim": ("count",), "verify": ("trim",), "search": ("trim",), "student": ("trim", "search"),
         "general": ("trim", "student", "search"), "finetune": (), "task": ("finetune", "general", "search"),
         "eval": ("task", "finetune")}
MARKER = "DONE.json"
FAILED = "FAILED"


# ---------------------------------------------------------------------------------------------
# Loading and validating


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"override {dotted}=...: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read the YAML file and apply `key=value` overrides (values parsed as YAML scalars)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    resolve_paths(config, path.parent)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise UserError(f"override {override!r}: expected key=value, e.g. general.steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"override {override!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                            f"{key}='\"...\"'") from None
        _set_dotted(config, key.strip(), value)
    config["_path"] = str(path)
    return config


# Options of stage sections that name a file or folder (resolved like the top-level paths).
SECTION_PATHS = {"trim": ("keep_file",), "search": ("token_cache",), "general": ("token_cache",),
                 "task": ("teacher_cache",), "eval": ("teacher_cache",)}


def resolve_paths(config: dict, base: Path) -> None:
    """Make the config's relative paths relative to its own folder `base`, so that
    `run path/to/config.yaml` works from any folder: run_dir, eval_data, the corpora, heldout and
    task_data sources (not `hf:` ones), `model` when it starts with `.`, `/` or `~` or names a
    path beside the config (otherwise it is a hub name), and the path options of stage sections.
    `key=value` overrides on the command line stay relative to the current folder."""

    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or not value or value.startswith("hf:") or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path) if path.is_absolute() else os.path.normpath(base / path)

    def resolve_all(value: Any) -> Any:
        return [resolve(v) for v in value] if isinstance(value, list) else resolve(value)

    for key in ("run_dir", "eval_data"):
        if key in config:
            config[key] = resolve(config[key])
    model = config.get("model")
    if isinstance(model, str) and (model.startswith((".", "/", "~")) or (base / model).exists()):
        config["model"] = resolve(model)
    for key in ("corpora", "heldout", "task_data"):
        if isinstance(config.get(key), dict):
            config[key] = {name: resolve_all(value) for name, value in config[key].items()}
    for stage, keys in SECTION_PATHS.items():
        section = config.get(stage)
        for key in keys if isinstance(section, dict) else ():
            if key in section:
                section[key] = resolve(section[key])


def _expect(condition: bool, key: str, expected: str, value: Any) -> None:
    if not condition:
        raise UserError(f"config key {key}: expected {expected}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Stages


@dataclass
class Stage:
    """One pipeline stage: the command it runs and how it is wired to the stages before it."""

    name: str
    command: Command
    wire: Callable[["Run"], dict]  # the connecting options (paths, languages), {name: value}
    wired: frozenset[str]  # their names, which a config section may not set
    resumable: bool = False  # a training stage (on every process): an interrupted run continues with --resume
    needs: tuple[str, ...] = ()  # stages whose outputs it reads: when one re-runs, so does it
    resume_from: str = "checkpoints"  # what an interrupted run leaves in its --out to resume from
    neutral: frozenset[str] = frozenset()  # options that change no result: not in its settings hash


class Run:
    """A validated config and where each stage's output lives."""

    def __init__(self, config: dict):
        self.config = config
        self.run_dir = Path(config["run_dir"])

    def dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def source(self) -> str:
        return self.config["languages"]["source"]

    @property
    def target(self) -> str:
        return self.config["languages"]["target"]

    @property
    def langs(self) -> list[str]:
        return [self.source, self.target] if self.source != self.target else [self.source]

    def lang_specs(self) -> list[str]:
        return [f"{lang}={source}" for lang in self.langs for source in self.config["corpora"][lang]]

    def phase1_model(self, general) -> Path:
        """Phase 1's model for phase 2: best/ (the best held-out loss, as BiStil keeps) when phase 1
        holds blocks out, else final/."""
        heldout = (self.config.get("general") or {}).get("heldout_blocks", general.option("heldout_blocks").default)
        return self.dir("general") / "run" / ("best" if heldout else "final")

    @property
    def searched(self) -> bool:
        """Whether the run's stages include search (whether or not this invocation runs it)."""
        return "search" in self.config.get("stages", DEFAULT_STAGES)

    def search_map(self, option: str) -> dict:
        """{option: the search's output folder} when the run searches (the option reads its
        layer_map.txt when the stage runs), else {}."""
        return {option: self.dir("search") / "run"} if self.searched else {}

    def options_of(self, stage: str, command: Command, names: tuple[str, ...]) -> dict:
        """The options `names` as the config's `stage` section gives them (validated already)."""
        values = command.from_config(stage, self.config.get(stage) or {}, set())
        return {name: values[name] for name in names if name in values}

    def trust(self) -> dict:
        return {"trust_remote_code": True} if self.config.get("trust_remote_code") else {}

    def searched_init_layers(self) -> dict:
        """The student's --init-layers from the search, unless the trimmed model shares one layer
        across its depth (ALBERT: nothing to pick; the mapping still reaches phase 1 and 2)."""
        from polyglot_distil.models.families import family_of
        from polyglot_distil.models.loading import load_model

        if not self.searched:
            return {}
        from transformers import AutoConfig

        trimmed = self.dir("trim") / "model"  # before the trim has run (the plan): the model it trims
        try:
            config = load_model(trimmed if (trimmed / "config.json").is_file() else self.config["model"], AutoConfig,
                                **self.trust())
        except UserError:  # not reachable now: the student stage will say so
            return self.search_map("init_layers")
        return {} if family_of(config).shared_layers else self.search_map("init_layers")

    def heldout_specs(self) -> list[str]:
        heldout = self.config.get("heldout") or self.config["corpora"]
        return [f"{lang}={source}" for lang in self.langs for source in heldout.get(lang, self.config["corpora"][lang])]


def _stage_table() -> dict[str, Stage]:
    """The stages: each runs a command (its words, as the command line spells it, settings dataclass
    and stage function: the command layer declares the same three, with the help)."""
    from polyglot_distil.distill import finetune, general, layer_search, student_stage, task
    from polyglot_distil.eval import xnli
    from polyglot_distil.vocab import count, trim, verify

    commands = {
        "count": Command(("count",), run=count.run_count, settings=count.CountSettings),
        "trim": Command(("trim",), run=trim.run_trim, settings=trim.TrimSettings),
        "verify": Command(("verify",), run=verify.run_verify, settings=verify.VerifySettings),
        "search": Command(("distil", "search-map"), run=layer_search.run_search_map,
                          settings=layer_search.SearchMapSettings),
        "student": Command(("student",), run=student_stage.run_student, settings=student_stage.StudentSettings),
        "general": Command(("distil", "general"), run=general.run_distil_general, settings=general.GeneralSettings),
        "finetune": Command(("finetune",), run=finetune.run_finetune, settings=finetune.FinetuneSettings),
        "task": Command(("distil", "task"), run=task.run_distil_task, settings=task.TaskSettings),
        "eval": Command(("eval", "xnli"), run=xnli.run_eval_xnli, settings=xnli.XNLISettings),
    }
    def stage(name, wire, wired, resumable=False, resume_from="checkpoints", neutral=()):
        return Stage(name, commands[name], wire, frozenset(wired), resumable, NEEDS[name], resume_from,
                     frozenset(neutral))

    return {s.name: s for s in (
        stage("count", lambda r: {
            "model": r.config["model"], "lang": r.lang_specs(), "out": r.dir("count") / "counts.parquet",
            **r.trust()}, {"model", "lang", "out", "trust_remote_code", "shard"}),
        stage("trim", lambda r: {
            "model": r.config["model"], "counts": r.dir("count") / "counts.parquet",
            "langs": ",".join(r.langs), "out": r.dir("trim") / "model", **r.trust()},
            {"model", "counts", "langs", "out", "trust_remote_code"}),
        stage("verify", lambda r: {
            "original": r.config["model"], "trimmed": r.dir("trim") / "model", "lang": r.heldout_specs(),
            "report": r.dir("verify") / "verify.json", **r.trust()},
            {"original", "trimmed", "lang", "report", "trust_remote_code"}),
        stage("search", lambda r: {
            "teacher": r.dir("trim") / "model", "lang": r.lang_specs(), "out": r.dir("search") / "run",
            **r.options_of("general", commands["general"], SEARCH_FROM_GENERAL),
            **r.options_of("student", commands["student"], SEARCH_FROM_STUDENT), **r.trust()},
            {"teacher", "student", "init_layers", "lang", "out", "resume", "trust_remote_code", *SEARCH_FROM_STUDENT},
            resumable=True, resume_from="search_config.json", neutral={"token_cache"}),
        stage("student", lambda r: {
            "teacher": r.dir("trim") / "model", "out": r.dir("student") / "model", **r.searched_init_layers(),
            **r.trust()},
            {"teacher", "out", "trust_remote_code"}),
        stage("general", lambda r: {
            "teacher": r.dir("trim") / "model", "student": r.dir("student") / "model", "lang": r.lang_specs(),
            "out": r.dir("general") / "run", **r.search_map("layer_map"), **r.trust()},
            {"teacher", "student", "lang", "out", "resume", "trust_remote_code"}, resumable=True,
            neutral={"token_cache"}),  # where the tokenized text is kept
        stage("finetune", lambda r: {
            "model": r.config["model"], "task": "nli", "train": [r.config["task_data"]["train"]],
            "dev": [r.config["task_data"]["dev"]], "out": r.dir("finetune") / "run", **r.trust()},
            {"model", "task", "train", "dev", "out", "resume", "trust_remote_code"}, resumable=True),
        stage("task", lambda r: {
            "teacher": r.dir("finetune") / "run" / "best", "student": r.phase1_model(commands["general"]),
            "task": "nli", "train": [r.config["task_data"]["train"]], "dev": [r.config["task_data"]["dev"]],
            "out": r.dir("task") / "run", **r.search_map("layer_map"), **r.trust()},
            {"teacher", "student", "task", "train", "dev", "out", "resume", "trust_remote_code"}, resumable=True),
        stage("eval", lambda r: {
            "model": r.dir("task") / "run" / "best", "teacher": r.dir("finetune") / "run" / "best",
            "langs": ",".join(dict.fromkeys([r.target, r.source])),
            **({"data": r.config["eval_data"]} if r.config.get("eval_data") else {}),
            "out": r.dir("eval") / "report", **r.trust()},
            {"model", "teacher", "langs", "data", "out", "trust_remote_code"},
            neutral={"teacher_cache"}),  # exact float64 predictions: the same report with or without
    )}


def validate(config: dict) -> list[Stage]:
    """Check the whole config before anything runs; return the stages to run, in order."""
    from polyglot_distil.data.corpus import parse_source

    unknown = [k for k in config if k not in TOP_LEVEL and k != "_path"]
    if unknown:
        raise UserError(f"config key {unknown[0]}: unknown (expected one of: {', '.join(TOP_LEVEL)})")
    for key in ("run_dir", "model"):
        _expect(isinstance(config.get(key), str) and config[key], key, "a non-empty string", config.get(key))
    languages = config.get("languages")
    _expect(isinstance(languages, dict) and set(languages) == {"source", "target"}, "languages",
            "a mapping with 'source' and 'target'", languages)
    names = config.get("stages", list(DEFAULT_STAGES))
    _expect(isinstance(names, list) and all(n in STAGES for n in names), "stages",
            f"a list of stages from {', '.join(STAGES)}", names)
    table = _stage_table()
    stages = [table[name] for name in STAGES if name in names]
    for section, key in SET_BY_SEARCH if "search" in names else ():
        if isinstance(config.get(section), dict) and key in config[section]:
            raise UserError(f"config key {section}.{key}: set by the search stage (stages names search); remove it, "
                            "or drop search from stages")
    needs_corpora = any(s.name in ("count", "verify", "search", "general") for s in stages)
    for key in ("corpora", "heldout") if needs_corpora else ():
        corpora = config.get(key)
        if key == "heldout" and corpora is None:
            continue
        _expect(isinstance(corpora, dict), key, "a mapping language -> list of sources", corpora)
        for lang in dict.fromkeys(languages.values()):
            sources = corpora.get(lang)
            if key == "heldout" and sources is None:
                continue
            _expect(isinstance(sources, list) and sources, f"{key}.{lang}", "a non-empty list of sources", sources)
            for i, source in enumerate(sources):
                try:
                    parse_source(str(source))
                except UserError as exc:
                    raise UserError(f"config key {key}.{lang}[{i}]: {exc}") from None
    if any(s.name in ("finetune", "task") for s in stages):
        data = config.get("task_data")
        _expect(isinstance(data, dict) and {"train", "dev"} <= set(data), "task_data",
                "a mapping with 'train' and 'dev' NLI sources", data)
        for key in ("train", "dev"):
            value = str(data[key])
            if not value.startswith("hf:") and not Path(value).exists():
                raise UserError(f"config key task_data.{key}: file not found: {value}")
    if config.get("eval_data") is not None and not Path(config["eval_data"]).is_dir():
        raise UserError(f"config key eval_data: folder not found: {config['eval_data']}")
    for stage in stages:
        section = config.get(stage.name) or {}
        _expect(isinstance(section, dict), stage.name, "a mapping of options", section)
        stage.command.from_config(stage.name, section, set(stage.wired))
    if "student" in names:
        _check_student_shape(config, table, names)
    _check_stage_options(config, stages)
    return stages


def _check_stage_options(config: dict, stages: list[Stage]) -> None:
    """Each stage's settings made now, as the stage will get them, and their checks that need no
    file run (the settings' own, and a training stage's `check_options`): finetune.lr=-1 is one
    line before the first stage, not after counting, trimming and phase 1."""
    run = Run(config)
    for stage in stages:
        try:
            settings = stage.command.namespace(**stage_values(run, stage))
            if hasattr(settings, "check_options"):
                settings.check_options()
        except UserError as exc:
            raise UserError(f"config section {stage.name}: {exc}") from None


def _check_student_shape(config: dict, table: dict[str, Stage], names: list[str]) -> None:
    """The student section, and the phases' layer maps, against the teacher's shape (its
    config.json: trimming keeps the layers and widths), before the first stage runs: `--layers 3`
    of a 2-layer teacher is one line now, not after hours of counting, trimming and fine-tuning."""
    from polyglot_distil.models.student import StudentShape, check_layers, parse_layers, planned_config

    stage = table["student"]

    teacher = Path(config["model"]) / "config.json"
    if not teacher.is_file():
        return  # a hub name: checked when the student stage loads it
    from transformers import AutoConfig

    section = stage.command.from_config("student", config.get("student") or {}, set(stage.wired))
    try:
        teacher_config = AutoConfig.from_pretrained(teacher.parent)
    except (OSError, ValueError) as exc:
        raise UserError(f"config key model: {teacher} cannot be read ({str(exc).splitlines()[0]})") from None
    try:
        shape = StudentShape(**{k: v for k, v in section.items() if k in {f.name for f in fields(StudentShape)}})
        student = planned_config(teacher_config, shape.spec(section.get("seed", 0)))
    except UserError as exc:
        raise UserError(f"config section student: {exc} (the teacher {config['model']})") from None
    for phase in ("general", "task"):
        layer_map = (config.get(phase) or {}).get("layer_map") if phase in names else None
        if layer_map is not None:
            where = f"config key {phase}.layer_map"
            check_layers(parse_layers(str(layer_map), where), teacher_config.num_hidden_layers,
                         student.num_hidden_layers, where)


def stage_values(run: Run, stage: Stage) -> dict:
    """The stage's options as the pipeline gives them: the wiring, then the config section."""
    section = run.config.get(stage.name) or {}
    wired = {name: str(value) if isinstance(value, Path) else value for name, value in stage.wire(run).items()}
    return {**wired, **stage.command.from_config(stage.name, section, set(stage.wired))}


def stage_argv(values: dict, stage: Stage, first_names: bool = False) -> list[str]:
    """The command line that runs the stage with `values` (for --check and logs); with
    `first_names`, under the options' first names (markers: a renamed option re-runs nothing)."""
    return [*stage.command.words, *stage.command.argv(values, first_names)]


def settings_hash(values: dict, stage: Stage) -> str:
    """What a completed stage's marker keeps of its options: a hash of the command line, without
    the options that change no result (so that adding one does not make a stage run again)."""
    kept = {k: v for k, v in values.items() if k not in stage.neutral and k not in NO_RESULT}
    return argv_hash(stage_argv(kept, stage, first_names=True))


def _argv_changes(old: list[str], new: list[str], renamed: dict[str, str | None] | None = None) -> str:
    """`--min-count: 2 -> 3` for the options that differ between two command lines (options that
    change no result left out; an old flag in `renamed` read as its new name, or left out if None)."""
    renamed = renamed or {}

    def options(argv: list[str]) -> dict[str, str]:
        found: dict[str, list[str]] = {}
        flag = None
        for word in argv:
            if word.startswith("--"):
                flag = renamed.get(word, word)
                found.setdefault(flag, [])
            elif flag is not None:
                found[flag].append(word)
        return {k: " ".join(v) or "on" for k, v in found.items()
                if k is not None and k[2:].replace("-", "_") not in NO_RESULT}

    before, after = options(old), options(new)
    changed = [f"{k}: {before.get(k, 'unset')} -> {after.get(k, 'unset')}"
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return "; ".join(changed[:3])


def stage_inputs(stage: Stage, values: dict) -> dict:
    """Fingerprints of the paths the stage reads (its options' READS roles), kept in its marker:
    a completed stage whose input changed under the same path is noticed, as a resumed training
    run notices it."""
    inputs, outputs = stage.command.paths(stage.command.namespace(**values))
    return input_fingerprints([path for _, path in inputs], skip=[path for _, path in outputs])


@dataclass
class Step:
    """A stage as this invocation will treat it: `argv` to run it with, or None to skip it."""

    stage: Stage
    values: dict | None  # the options to run it with (None: skip it)
    settings_hash: str  # of the stage's options, before --resume / --overwrite (they change no result)

    @property
    def argv(self) -> list[str] | None:
        return None if self.values is None else stage_argv(self.values, self.stage)


def plan(run: Run, stages: list[Stage], forced: bool) -> list[Step]:
    """Decide, before anything runs, which stages run and how. A completed stage is skipped
    unless it is the first of `stages` and `forced` (--only / --from STAGE) or a stage it reads
    from runs now (its inputs change): --from trim runs trim and the stages that read it, not a
    completed finetune, which reads nothing trim makes. A stage that runs on unchanged inputs
    resumes from its checkpoints when it has some (an interrupted run); any other output it finds
    from an earlier attempt is overwritten."""
    steps, rerun = [], set()
    for stage in stages:
        values = stage_values(run, stage)
        settings = settings_hash(values, stage)
        marker = run.dir(stage.name) / MARKER
        upstream = [need for need in stage.needs if need in rerun]
        running = (forced and stage is stages[0]) or bool(upstream)
        output = Path(values["out"]) if values.get("out") is not None else None
        started = output is not None and (output / stage.resume_from).exists()  # an interrupted run's traces
        if upstream and not forced and (marker.is_file() or started):
            # Its inputs are being re-made (their marker is missing): replacing a finished output,
            # or days of checkpoints, is for the user to ask for.
            first = next(s.name for s in stages if s.name in rerun)
            raise UserError(f"stage {first} runs again (it has no {MARKER}), which would replace the output of "
                            f"{stage.name} in {run.dir(stage.name)}; to re-run from there on purpose pass "
                            f"--from {first}, or restore {run.dir(first) / MARKER}")
        if not running and marker.is_file():
            try:
                done = json.loads(marker.read_text(encoding="utf-8"))
                if not isinstance(done, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:  # cut short by a full disk, or edited by hand
                raise UserError(f"{marker}: damaged ({type(exc).__name__}: {exc}); to run stage {stage.name} "
                                f"again, remove it or pass --from {stage.name}") from None
            if done.get("argv_hash") != settings:
                renamed = {old: o.flags[-1] for o in stage.command.options for old in o.renamed_from}
                renamed.update({o.flags[-1]: None for o in stage.command.options if o.deprecated})
                changes = _argv_changes(done.get("argv") or [], stage_argv(values, stage), renamed)
                raise UserError(f"stage {stage.name} was completed with other settings ({changes or marker}); "
                                f"re-run it with --from {stage.name} (the later stages that read it run again "
                                f"too), or restore its settings")
            changed = changed_inputs(done["inputs"], stage_inputs(stage, values)) if "inputs" in done else []
            if changed:
                more = f"; and {len(changed) - 2} more" if len(changed) > 2 else ""
                raise UserError(f"stage {stage.name} was completed on inputs that have changed since "
                                f"({'; '.join(changed[:2])}{more}); re-run it on them with --from {stage.name}, "
                                "or restore them")
            steps.append(Step(stage, None, settings))
            continue
        if stage.resumable and not running and started:
            values["resume"] = True
        elif (output is not None and output.exists()) or stage.name == "verify":
            values["overwrite"] = True  # an earlier attempt, or a re-run with new inputs
        rerun.add(stage.name)
        steps.append(Step(stage, values, settings))
    return steps


def run_pipeline(config: dict, only: str | None = None, start: str | None = None) -> list[str]:
    """Run the config's stages; return the names of the stages that ran (not skipped).

    Under `accelerate launch` (several processes) the main process makes the plan and sends it
    to the others; the training stages run on every process, the other stages on the main one
    while the rest wait for its marker (a file, so a long count is not cut by a collective's
    timeout)."""
    stages = validate(config)
    names = [s.name for s in stages]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise UserError(f"{flag} {value}: not a stage of this config (stages: {', '.join(names)})")
    if only:
        stages = [s for s in stages if s.name == only]
    elif start:
        stages = stages[names.index(start):]
    run = Run(config)
    rank, world = _process_rank()
    if rank == 0:
        hold_lock(run.run_dir)  # two runs of one config at once: the second refuses
    try:
        return _run_steps(run, stages, only, start, rank, world)
    finally:
        release_lock(run.run_dir)


def _run_steps(run: Run, stages: list[Stage], only: str | None, start: str | None, rank: int,
               world: int) -> list[str]:
    steps, error = None, None
    if rank == 0:
        try:
            steps = plan(run, stages, forced=bool(only or start))
        except UserError as exc:
            error = str(exc)
        for step in steps or []:
            if step.values is not None:  # markers of stages about to run are stale from here on
                run.dir(step.stage.name).mkdir(parents=True, exist_ok=True)
                (run.dir(step.stage.name) / MARKER).unlink(missing_ok=True)
                (run.dir(step.stage.name) / FAILED).unlink(missing_ok=True)
    if world > 1:
        steps, error = _share_plan(steps, error)
    if error:
        raise UserError(error)
    if rank == 0:  # what the stages about to run will cost, roughly, and a budget that cannot beat chance
        from polyglot_distil.budget import estimate_lines

        for line in estimate_lines(run.config, {step.stage.name: vars(step.stage.command.namespace(**step.values))
                                                for step in steps if step.values is not None}):
            print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)
    if rank > 0:  # several nodes: the markers polled below must be visible here
        wait_visible(lock_path(run.run_dir), what="the run folder's lock, taken by the main process")
    ran = []
    for step in steps:
        stage, argv = step.stage, step.argv
        marker = run.dir(stage.name) / MARKER
        if step.values is None:
            if rank == 0:
                print(f"[{stage.name}] done earlier, skipped")
            continue
        if rank > 0:
            if stage.resumable:
                stage.command.call(stage.command.namespace(**step.values))
            _wait_for(marker, stage.name)
            continue
        if step.values.get("resume"):
            print(f"[{stage.name}] resuming where it stopped ({stage.resume_from})")
        print(f"[{stage.name}] polyglot-distil {' '.join(argv)}", flush=True)
        start_time = time.time()
        try:
            code = show_report(stage.command.call(stage.command.namespace(**step.values)))
            if code != 0:
                raise UserError(f"stage {stage.name} failed (exit status {code}); fix it and re-run: "
                                "completed stages are skipped")
        except BaseException:
            replace_text(run.dir(stage.name) / FAILED, stage.name)
            raise
        replace_text(marker, json.dumps({"stage": stage.name, "argv": argv, "argv_hash": step.settings_hash,
                                         "inputs": stage_inputs(stage, step.values),
                                         "seconds": round(time.time() - start_time, 1),
                                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
        ran.append(stage.name)
    return ran


def _process_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun / accelerate launch; (0, 1) otherwise."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _share_plan(steps: list[Step] | None, error: str | None) -> tuple[list[Step], str | None]:
    """Send the main process's plan (or its error) to every process; this happens at once, at
    start-up, so the collective's timeout is no concern."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # Joins the process group that accelerate launch set up (gloo on a machine without GPUs, as
    # the training loop's Accelerator will).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != _process_rank()[1]:
        raise UserError(f"launched as {_process_rank()[1]} processes, but accelerate set up {state.num_processes}")
    plain = None if steps is None else [(s.stage.name, s.values, s.settings_hash) for s in steps]
    shared = [plain, error]  # stages hold functions, which do not pickle: send their names
    broadcast_object_list(shared, from_process=0)
    table = _stage_table()
    return [Step(table[name], values, h) for name, values, h in shared[0] or []], shared[1]


def _wait_for(path: Path, stage: str, poll_seconds: float = 2.0) -> None:
    """Wait (without a collective, so without its timeout) for the main process's file."""
    failed = path.parent / FAILED
    while not path.exists():
        if failed.exists():
            raise UserError(f"stage {stage} failed on the main process; see its output")
        time.sleep(poll_seconds)


def show_report(report) -> int:
    """Print a stage function's report as its command does, and return its exit status: the lines
    it holds for a reader ("lines": tables, "wrote ...") on stdout, then why it failed ("failure",
    with a non-zero "exit_status": verify's verdict) on stderr. `cli.main` and `run`'s stage loop
    both show reports with it; the stage functions print nothing on stdout."""
    if isinstance(report, dict):
        for line in report.get("lines", []):
            print(line)
        if report.get("failure"):
            print(report["failure"], file=sys.stderr)
    return exit_status(report)


# the two positional options of `run` and `sizes`
CONFIG = Option("config", kind=POSITIONAL, required=True, help="YAML config (see configs/)")
OVERRIDES = Option("overrides", kind=POSITIONAL, nargs="*", metavar="KEY=VALUE", default=[],
                   help="override config fields, e.g. general.steps=100")


@dataclass(kw_only=True)
class RunSettings:
    """`run`'s settings."""

    config: str = like(CONFIG)
    overrides: list[str] = like(OVERRIDES)
    only: str | None = setting(None, metavar="STAGE",
                               help=f"run only this stage (again, if it was done); one of: {', '.join(STAGES)}")
    start: str | None = setting(None, flag="--from", metavar="STAGE",
                                help=f"run this stage again and the later stages that read from it; one of: "
                                     f"{', '.join(STAGES)}")
    check: bool = setting(False, kind=FLAG, help="validate the config and print the commands; run nothing")

    def __post_init__(self):
        if self.only and self.start:
            raise UserError(f"--only {self.only} and --from {self.start} contradict each other: give one of them")


def run_run(settings: RunSettings) -> dict:
    """The `run` command: a config's stages in order (or, with --check, their command lines)."""
    import shlex

    config = load_config(settings.config, settings.overrides)
    if settings.check:
        run = Run(config)
        stages = validate(config)
        names = [s.name for s in stages]
        for flag, value in (("--only", settings.only), ("--from", settings.start)):
            if value is not None and value not in names:
                raise UserError(f"{flag} {value}: not a stage of this config (stages: {', '.join(names)})")
        if settings.only:
            stages = [s for s in stages if s.name == settings.only]
        elif settings.start:
            stages = stages[names.index(settings.start):]
        for stage in stages:
            print(f"[{stage.name}] {shlex.join(['polyglot-distil', *stage_argv(stage_values(run, stage), stage)])}")
        print(f"{settings.config}: valid")
        return {"valid": True, "ran": []}
    ran = run_pipeline(config, settings.only, settings.start)
    if _process_rank()[0] > 0:
        return {"ran": ran}  # the main process reports
    print(f"pipeline done ({', '.join(ran) or 'nothing to do'}); outputs under {config['run_dir']}")
    trim_report = Path(config["run_dir"]) / "trim" / "model" / "trim_report.json"
    if trim_report.is_file():
        print(f"\n## Size (trim of {config['model']})\n\n{size_table(json.loads(trim_report.read_text(encoding='utf-8')))}")
    report = Path(config["run_dir"]) / "eval" / "report" / "REPORT.md"
    if report.is_file():
        print(f"report: {report}\n")
        print(main_tables(report.read_text(encoding="utf-8")))
    return {"ran": ran, "run_dir": str(config["run_dir"])}


def size_table(trim_report: dict) -> str:
    """Parameters, embedding share, weights and folder on disk, before and after the trim."""
    r = trim_report
    return text_table([
        ["", "source", "trimmed", "change"],
        ["vocabulary", f"{r['vocab_size_before']:,}", f"{r['vocab_size_after']:,}",
         f"{100 * (r['vocab_size_after'] / r['vocab_size_before'] - 1):+.1f}%"],
        ["parameters", f"{r['params_before']:,}", f"{r['params_after']:,}", f"{-100 * r['reduction']:+.1f}%"],
        ["embedding share", f"{100 * r['embedding_share_before']:.1f}%", f"{100 * r['embedding_share_after']:.1f}%", ""],
        ["weights (MB)", f"{r['weights_bytes_before'] / 1e6:,.1f}", f"{r['weights_bytes_after'] / 1e6:,.1f}",
         f"{100 * (r['weights_bytes_after'] / r['weights_bytes_before'] - 1):+.1f}%"],
        ["folder on disk (MB)", "", f"{(r.get('folder_bytes_after') or 0) / 1e6:,.1f}", ""],
    ], rule=True)


def main_tables(report_md: str, sections: tuple[str, ...] = ("Accuracy", "Fidelity", "Efficiency")) -> str:
    """The report's headline sections (accuracy, fidelity, efficiency), without the rest."""
    parts = report_md.split("\n## ")
    return "\n".join("## " + p.strip() + "\n" for p in parts[1:] if p.startswith(sections))
