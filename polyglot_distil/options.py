"""Options declared once: every stage's settings are one dataclass, from which the command line,
the YAML config of `run` and the Python API are all made.

A stage module declares its settings dataclass (`vocab.count.CountSettings`: each field a
`setting(...)` with its type, default, help and how the command line spells it) and the stage
function that takes it (`run_count(settings: CountSettings) -> report`); `Command` names the two
with the command's words and help. `cli/` turns the fields into an argparse parser; `pipeline`
checks a config section against the same fields (`Command.from_config`) and calls the stage
function with the dataclass (`Command.namespace`); `api`'s keyword arguments are the fields
(tests/test_api_signatures.py). A default, a type or a choice is therefore written in one place.

This module is pure data and imports neither argparse nor torch.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import KW_ONLY, MISSING, dataclass, field, replace
from typing import Any, Callable, Sequence

from polyglot_distil.errors import UserError

VALUE, FLAG, NEGATED, APPEND, POSITIONAL = "value", "flag", "negated", "append", "positional"
READS, WRITES = "reads", "writes"  # an option's `role`: a path the command reads, or its output


@dataclass(frozen=True)
class Option:
    """One option. `name` is its attribute and its YAML key (`min_count`); its flag is
    `--min-count` unless `flag` says otherwise.

    kind: VALUE (takes one value, converted by `type`), FLAG (true when given), NEGATED (false
    when given: `--exclude-embeddings` sets `include_embeddings` false; its YAML key is the flag's
    name), APPEND (repeatable; a list in YAML), POSITIONAL (`nargs` values, command line only).
    """

    name: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    help: str | None = None
    kind: str = VALUE
    flag: str | None = None
    choices: tuple | None = None
    required: bool = False
    metavar: str | None = None
    nargs: str | None = None
    group: str | None = None
    role: str | None = None  # READS: its value names files the command reads; WRITES: the output
    renamed_from: tuple[str, ...] = ()  # its old flags, still accepted for one release with a warning
    deprecated: str | None = None  # why the option goes: hidden from --help, a warning when given

    def paths(self, value: Any) -> list[str]:
        """The file paths in this option's value (`LANG=KIND:PATH?key=value` sources included)."""
        values = value if isinstance(value, (list, tuple)) else [value]
        found = []
        for item in values:
            if item is None:
                continue
            text = str(item)
            if self.metavar and self.metavar.startswith("LANG=") and "=" in text:
                text = text.split("=", 1)[1]
            kind, colon, rest = text.partition(":")
            if colon and kind.isalpha() and len(kind) > 1:  # KIND:PATH (not a Windows drive)
                text = rest
            found.append(text.split("?", 1)[0])
        return found

    @property
    def flags(self) -> list[str]:
        return [self.flag or "--" + self.yaml_key.replace("_", "-")]

    @property
    def first_flag(self) -> str:
        """The option's first name: what a stage marker hashes, so that a rename re-runs nothing."""
        return self.renamed_from[0] if self.renamed_from else self.flags[-1]

    @property
    def old_yaml_keys(self) -> list[str]:
        return [flag.lstrip("-").replace("-", "_") for flag in self.renamed_from]

    def renamed_warning(self, old: str) -> str:
        """The one line a use of the old name `old` (a flag or a config key) prints."""
        new = self.flags[-1] if old.startswith("-") else self.yaml_key
        return f"warning: {old} is renamed {new}; the old name goes in the next release (docs/renamed-options.md)"

    @property
    def yaml_key(self) -> str:
        """The key of the option in a config section."""
        if self.kind == NEGATED and self.flag:
            return self.flag.lstrip("-").replace("-", "_")
        return self.name

    @property
    def type_name(self) -> str:
        return getattr(self.type, "__name__", "a valid value")

    def convert(self, text: str, where: str) -> Any:
        """`text` as the command line would convert it; a UserError naming `where` otherwise."""
        value = text
        if self.type is not None:
            try:
                value = self.type(text)
            except (TypeError, ValueError):
                raise UserError(f"{where}: expected {self.type_name}, got {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{where}: expected one of {', '.join(map(str, self.choices))}, got {text!r}")
        return value


ADVANCED = "advanced (tuning only: speed, memory, numerics, logging)"


def setting(default: Any = MISSING, *, help: str | None = None, kind: str = VALUE, type: Callable[[str], Any] | None = None,
            flag: str | None = None, choices: tuple | None = None, metavar: str | None = None,
            nargs: str | None = None, group: str | None = None, role: str | None = None, advanced: bool = False,
            renamed_from: tuple[str, ...] = (), deprecated: str | None = None) -> Any:
    """A field of a stage's settings dataclass that is also its option: the default (none: the
    option is required), the help and how the command line spells it (see `Option`). The value's
    converter is the field's type (`int`, `float`, `str`) unless `type` names another. `advanced`:
    an option that tunes speed, memory or numerics only, shown under ADVANCED in `--help`;
    `renamed_from`: its old flags; `deprecated`: why it goes (hidden from `--help`)."""
    meta = {"help": help, "kind": kind, "type": type, "flag": flag, "choices": choices, "metavar": metavar,
            "nargs": nargs, "group": ADVANCED if advanced else group, "role": role,
            "renamed_from": tuple(renamed_from), "deprecated": deprecated}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default.copy(), metadata={"option": meta})
    return field(default=default, metadata={"option": meta})


def like(option: Option, advanced: bool = False, **changes: Any) -> Any:
    """A settings field declared as the shared `option` is (`OVERWRITE`, `SEED`, ...), with `changes`
    (another help, group or default)."""
    option = replace(option, **changes)
    if advanced:
        option = replace(option, group=ADVANCED)
    default = option.default if option.kind not in (FLAG,) else False
    if option.kind == NEGATED and default is None:
        default = True
    return setting(MISSING if option.required else default, help=option.help, kind=option.kind, type=option.type,
                   flag=option.flag, choices=option.choices, metavar=option.metavar, nargs=option.nargs,
                   group=option.group, role=option.role)


_CONVERTERS = {int: int, float: float}


def _converter(hint: Any) -> Callable[[str], Any] | None:
    """The converter of a value typed `hint` (`int | None` -> int; `str`, lists of str -> None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in args if a is not type(None)]
        return _converter(found[0]) if len(found) == 1 else None
    if typing.get_origin(hint) in (list, tuple) and args:
        return _converter(args[0])
    return _CONVERTERS.get(hint)


def options_of(settings: type) -> list[Option]:
    """The `Option`s of a settings dataclass, in field order (fields made with `setting`). A settings
    class made of parts (dataclasses it inherits) may show a part's fields under a title in `--help`:
    `PART_GROUPS = {StudentShape: "student (when --student is not given)"}`; and retitle a shared
    group: `GROUP_TITLES = {"training": "training (--method qat)"}`."""
    hints = typing.get_type_hints(settings)
    groups = {f.name: title for part, title in getattr(settings, "PART_GROUPS", {}).items()
              for f in dataclasses.fields(part)}
    options = []
    for f in dataclasses.fields(settings):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        if f.name in groups and not meta["group"]:
            meta = {**meta, "group": groups[f.name]}
        if meta["group"] in getattr(settings, "GROUP_TITLES", {}):
            meta = {**meta, "group": settings.GROUP_TITLES[meta["group"]]}
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        required = f.default is MISSING and f.default_factory is MISSING and meta["kind"] != POSITIONAL
        options.append(Option(f.name, type=meta["type"] or _converter(hints[f.name]), default=default,
                              help=meta["help"], kind=meta["kind"], flag=meta["flag"], choices=meta["choices"],
                              required=required, metavar=meta["metavar"], nargs=meta["nargs"], group=meta["group"],
                              role=meta["role"], renamed_from=meta.get("renamed_from", ()),
                              deprecated=meta.get("deprecated")))
    return options


@dataclass(frozen=True)
class Command:
    """A subcommand: `words` (`("distil", "general")`), `run`, the stage function that takes the
    settings dataclass `settings` and returns its report (or an exit status), and the options made
    from `settings`. Each command is declared, with its help, in its module of the command layer
    (`polyglot_distil.cli`); `run` and the API, below that layer, make the same object from a
    stage's words, settings and function, without the help, to read a config, rebuild a command
    line and call the stage."""

    words: tuple[str, ...]
    _: KW_ONLY
    run: Callable[[Any], Any]
    settings: type  # the stage's settings dataclass, whose fields are the options
    help: str = ""
    description: str | None = None
    raw_description: bool = False  # keep the description's line breaks in --help
    group_help: dict = field(default_factory=dict)  # the help of a command group, e.g. {"distil": "..."}
    options: Sequence[Option] = field(init=False, default=())  # made from `settings`

    def __post_init__(self):
        object.__setattr__(self, "options", options_of(self.settings))

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def paths(self, options: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(inputs, outputs) named by `options`: [(flag, path)], from the options' roles."""
        inputs, outputs = [], []
        for option in self.options:
            if option.role:
                name = option.name if option.kind == POSITIONAL else option.flags[-1]
                pairs = [(name, path) for path in option.paths(getattr(options, option.name, None))]
                (inputs if option.role == READS else outputs).extend(pairs)
        return inputs, outputs

    def call(self, options: Any):
        """Run the stage on `options`, after refusing an output that is, holds or lies inside a
        path it reads (an --overwrite would delete its own input)."""
        from polyglot_distil.outputs import check_apart

        check_apart(*self.paths(options))
        return self.run(options)

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)

    def defaults(self) -> dict[str, Any]:
        return {o.name: (list(o.default) if isinstance(o.default, list) else o.default) for o in self.options}

    def namespace(self, **values: Any) -> Any:
        """The options as the stage function takes them, its settings dataclass: the defaults, then
        `values` (Python values, already of the right type), each name checked."""
        return make_settings(self.settings, values, self.name)

    # -- configs ----------------------------------------------------------------------------

    def by_yaml_key(self) -> dict[str, Option]:
        return {o.yaml_key: o for o in self.options if o.kind != POSITIONAL}

    def old_names_used(self, argv: list[str]) -> list[str]:
        """The warnings for the renamed and deprecated options that `argv` uses (one line each)."""
        lines = []
        for option in self.options:
            for old in option.renamed_from:
                if any(word == old or word.startswith(old + "=") for word in argv):
                    lines.append(option.renamed_warning(old))
            if option.deprecated and any(word == option.flags[-1] or word.startswith(option.flags[-1] + "=")
                                         for word in argv):
                lines.append(f"warning: {option.flags[-1]} is deprecated: {option.deprecated}")
        return lines

    def from_config(self, stage: str, section: dict, wired: set[str]) -> dict[str, Any]:
        """A config section's {name: value}, converted and checked as the command line would
        check them; keys the pipeline sets (`wired`) or that the command lacks are refused with
        one line naming the key and what was expected."""
        options = self.by_yaml_key()
        renamed = {old: o for o in self.options for old in o.old_yaml_keys}
        values: dict[str, Any] = {}
        for key, value in section.items():
            where = f"config key {stage}.{key}"
            name = key.replace("-", "_")
            if name in renamed and name not in options:
                warn_once(renamed[name].renamed_warning(f"{stage}.{name}"))
                name = renamed[name].yaml_key
            if name in wired:
                raise UserError(f"{where}: set by the pipeline (it connects the stages); remove it")
            if name not in options:
                known = ", ".join(sorted(k for k in options if options[k].name not in wired))
                raise UserError(f"{where}: unknown option (expected one of: {known})")
            if value is None:
                continue
            option = options[name]
            if option.kind in (FLAG, NEGATED):
                if not isinstance(value, bool):
                    raise UserError(f"{where}: expected true or false, got {value!r}")
                values[option.name] = value if option.kind == FLAG else not value
                continue
            many = option.kind == APPEND or option.nargs in ("*", "+")
            items = value if many and isinstance(value, list) else [value]
            if isinstance(value, list) and not many:
                items = [",".join(str(v) for v in value)]  # lists become comma-separated options
            converted = []
            for item in items:
                if isinstance(item, (dict, list)):
                    raise UserError(f"{where}: expected a single value, got {item!r}")
                converted.append(option.convert(str(item).lower() if isinstance(item, bool) else str(item), where))
            values[option.name] = converted if many else converted[0]
        return values

    def argv(self, values: dict[str, Any], first_names: bool = False) -> list[str]:
        """The command line that gives `values` (for `run --check`, markers and logs); with
        `first_names`, each option under its first name (what markers hash: a rename re-runs nothing)."""
        argv: list[str] = []
        by_name = {o.name: o for o in self.options}
        for name, value in values.items():
            option = by_name[name]
            if option.deprecated and not first_names:
                continue
            flag = option.first_flag if first_names else option.flags[-1]
            if option.kind == FLAG:
                argv += [flag] if value else []
            elif option.kind == NEGATED:
                argv += [] if value else [flag]
            elif option.kind == APPEND:
                for item in value:
                    argv += [flag, str(item)]
            elif option.nargs in ("*", "+"):
                argv += [flag, *map(str, value)]
            elif value is not None:
                argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
        return argv


_WARNED: set[str] = set()


def warn_once(line: str) -> None:
    """Print a warning line to stderr, once per process (a config is read more than once)."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def make_settings(settings: type, values: dict[str, Any], where: str):
    """`settings(**values)`, a missing required value or an unknown name said in one line."""
    fields = {f.name: f for f in dataclasses.fields(settings)}
    unknown = [name for name in values if name not in fields]
    if unknown:
        raise UserError(f"{where}: unknown option {unknown[0]!r} (expected one of: {', '.join(fields)})")
    missing = [f for f in fields.values() if f.default is MISSING and f.default_factory is MISSING
               and values.get(f.name) is None]
    if missing:
        option = next(o for o in options_of(settings) if o.name == missing[0].name)
        name = option.name if option.kind == POSITIONAL else option.flags[-1]
        raise UserError(f"{where}: {name} is required")
    return settings(**values)


def exit_status(result) -> int:
    """The exit status of a stage function's result: a report (dict) says it under
    "exit_status" (0 when absent); an int is one."""
    if isinstance(result, dict):
        return int(result.get("exit_status", 0))
    return int(result or 0)


def csv(text: str) -> list[str]:
    """`en,fr` -> ["en", "fr"] (blanks dropped)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


# Options that change no result, only how a run reports and saves its progress and whether it
# resumes or starts over: a training run's configuration hash leaves them out (`--resume` accepts
# them changed), and so does a `run` stage's completion marker (editing one re-runs nothing). The
# one list for both. (`progress` is `no_progress` as TrainSettings holds it.)
NO_RESULT = frozenset({"no_progress", "progress", "log_every", "keep_checkpoints", "save_every", "grad_accum",
                       "resume", "overwrite"})
# Options that many commands share, declared once (a settings field declares itself `like(OVERWRITE)`).
OVERWRITE = Option("overwrite", kind=FLAG, help="replace an existing output")
TRUST_REMOTE_CODE = Option("trust_remote_code", kind=FLAG, help="allow the model's own code to run")
NO_PROGRESS = Option("no_progress", kind=FLAG,
                     help="no progress display (by default: a bar on a terminal; in a log file a line every 30 s, "
                          "or every $POLYGLOT_DISTIL_PROGRESS_SECONDS, 0 for none)")
SEED = Option("seed", type=int, default=0)
