"""The `polyglot-distil` command: one subcommand per pipeline stage, one module per command.

    polyglot-distil count   --model NAME --lang en=FILE --lang fr=FILE --out counts.parquet
    polyglot-distil merge   part0.parquet part1.parquet --out counts.parquet
    polyglot-distil trim    --model NAME --counts counts.parquet --langs en,fr --out DIR
    polyglot-distil verify  --original NAME --trimmed DIR --lang en=FILE --lang fr=FILE
    polyglot-distil student --teacher DIR --out DIR [--layers 6 --init-layers 0,2,4,7,9,11]
    polyglot-distil finetune --model NAME --train SOURCE --dev SOURCE --out DIR
    polyglot-distil distil search-map --teacher DIR --student DIR --lang en=FILE --lang fr=FILE --out DIR
    polyglot-distil distil general --teacher DIR --student DIR --lang en=FILE --lang fr=FILE --out DIR
    polyglot-distil distil task --teacher DIR --student DIR --train SOURCE --dev SOURCE --out DIR
    polyglot-distil apply-diff --student DIR --diff DIR/sparse_diff --out DIR
    polyglot-distil quantize --model DIR --out DIR [--method dynamic|qat --bits 8 --embeddings int8]
    polyglot-distil export onnx --model DIR --out DIR [--int8 --check-text FILE]
    polyglot-distil eval xnli --model DIR [--teacher DIR] --langs fr,sw [--data DIR] --out DIR
    polyglot-distil run CONFIG.yaml [key=value ...] [--only STAGE] [--from STAGE]   # all of it
    polyglot-distil sizes CONFIG.yaml --layer-counts 2,4,6   # one student per size, size/latency/accuracy table
    polyglot-distil smoke-model --tokenizer-text corpora/*/sample.txt --out DIR   # tiny random model, offline

Mistakes a user can make end with one line `error: ...` and exit status 2; a traceback means
a bug in polyglot-distil (set POLYGLOT_DISTIL_DEBUG=1 to see tracebacks of user errors too).
Ctrl-C exits with 130 and SIGTERM (`kill`, SLURM preemption) with 143, after the same clean-up:
temporaries removed, locks released, a training run's checkpoint saved.

Each command module declares its `Command`: its words, help, the settings dataclass its options
are made from and the stage function it calls, both from the library (which `run` and `api` call
too, without this layer); `smoke_model`, `export_onnx` and `import_model` hold the whole command
(settings, report) over library functions. The parser is made from the settings dataclasses
here; `main` calls the stage function and prints the lines its report holds for a reader
(`report["lines"]`: tables, "wrote ..."); a stage function writes nothing on stdout itself.
An old option name (docs/renamed-options.md) prints one warning line and works.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading

from polyglot_distil import __version__
from polyglot_distil.errors import Terminated, UserError, interruption
from polyglot_distil.options import ADVANCED, APPEND, FLAG, NEGATED, POSITIONAL, Command, warn_once
from polyglot_distil.outputs import release_locks


def command_modules():
    """The command modules, in pipeline order (the order of `--help`)."""
    from polyglot_distil.cli import (apply_diff, count, distil_general, distil_search_map, distil_task, eval_xnli,
                                     export_onnx, finetune, import_model, merge, quantize, run, sizes, smoke_model,
                                     student, trim, verify)

    return [import_model, count, merge, trim, verify, student, finetune, distil_search_map, distil_general,
            distil_task, apply_diff, quantize, export_onnx, smoke_model, eval_xnli, run, sizes]


def add_command(subparsers: dict, root_subparsers, command: Command) -> argparse.ArgumentParser:
    """Add `command` (a group such as `distil` is made on first use) and its options."""
    parent = root_subparsers
    for depth, word in enumerate(command.words[:-1]):
        key = command.words[:depth + 1]
        if key not in subparsers:
            group = parent.add_parser(word, help=_literal(command.group_help.get(word)),
                                      description=command.group_help.get(word))
            subparsers[key] = group.add_subparsers(dest="_".join(key) + "_sub", metavar="SUB", required=True)
        parent = subparsers[key]
    formatter = argparse.RawDescriptionHelpFormatter if command.raw_description else argparse.HelpFormatter
    parser = parent.add_parser(command.words[-1], help=_literal(command.help),
                               description=command.description or command.help,
                               formatter_class=formatter)
    groups: dict = {}
    for option in sorted(command.options, key=lambda o: o.group == ADVANCED):  # "advanced" last in --help
        target = parser
        if option.group:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            target = groups[option.group]
        kwargs: dict = {"help": argparse.SUPPRESS if option.deprecated else _help_with_default(option)}
        if option.kind == POSITIONAL:
            target.add_argument(option.name, nargs=option.nargs, metavar=option.metavar, help=kwargs["help"],
                                choices=option.choices,
                                **({"default": option.default} if option.nargs in ("*", "?") else {}))
            continue
        if option.kind == FLAG:
            kwargs.update(action="store_true")
        elif option.kind == NEGATED:
            kwargs.update(action="store_false", default=option.default)
        else:
            # a renamed option's old flag may stand for it: the settings say when it is missing
            kwargs.update(type=option.type, default=option.default, choices=option.choices, metavar=option.metavar,
                          required=option.required and not option.renamed_from)
            if option.kind == APPEND:
                kwargs.update(action="append", default=None)
            elif option.nargs:
                kwargs.update(nargs=option.nargs)
        target.add_argument(*option.flags, dest=option.name, **kwargs)
        for old in option.renamed_from:  # accepted for one release, not shown
            target.add_argument(old, dest=option.name, **{**kwargs, "help": argparse.SUPPRESS, "required": False})
    parser.set_defaults(_command=command)
    return parser


def _literal(text: str | None) -> str | None:
    """`text` with its `%` signs kept as they are by argparse's help formatting."""
    return text.replace("%", "%%") if text else text


def _help_with_default(option) -> str | None:
    """The option's help, with its default when it has one worth saying and the help does not;
    a `%` in it is a percent sign (argparse would read it as a format)."""
    text = option.help or ""
    default = option.default
    if option.kind not in (FLAG, NEGATED, APPEND) and default not in (None, [], "") and "default" not in text:
        text = f"{text} (default: {default})".strip()
    return _literal(text) if text else option.help


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built once per process (`run` and the tests call `main` many
    times; argparse reads a parser, it does not change it)."""
    parser = argparse.ArgumentParser(
        prog="polyglot-distil",
        description="Small, fast, language-specific models out of multilingual encoders.")
    parser.add_argument("--version", action="version", version=f"polyglot-distil {__version__}")
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers: dict = {}
    for module in command_modules():
        add_command(subparsers, root, module.COMMAND)
    return parser


def parse_args(argv: list[str] | None = None):
    """(command, options) for `argv`; list options that were not given get their default; an old
    option name prints its one-line warning."""
    args = build_parser().parse_args(argv)
    command: Command = args._command
    for line in command.old_names_used(sys.argv[1:] if argv is None else [str(word) for word in argv]):
        warn_once(line)
    values = vars(args)
    for option in command.options:
        if option.kind == APPEND and values.get(option.name) is None:
            values[option.name] = list(option.default or [])
    for key in [k for k in values if k.startswith("_") or k == "command" or k.endswith("_sub")]:
        del values[key]
    return command, command.namespace(**values)


def main(argv: list[str] | None = None) -> int:
    previous = _terminate_as_interrupt()
    try:
        command, options = parse_args(argv)  # a settings check may refuse a value: one line
        from polyglot_distil.models.loading import quiet_transformers

        quiet_transformers()
        from polyglot_distil.pipeline import show_report

        return show_report(command.call(options))  # its lines on stdout, a failure on stderr
    except UserError as exc:
        if os.environ.get("POLYGLOT_DISTIL_DEBUG"):
            raise
        for line in exc.lines:  # what the stage had reached (a table) before it failed
            print(line)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        release_locks()  # of outputs a failed command did not get to write
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt():
    """SIGTERM (`kill`, SLURM preemption, Kubernetes) raises `Terminated`, a KeyboardInterrupt, so that
    it gets Ctrl-C's cleanup; returns the handler it replaced (None outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise interruption(signum)

    return signal.signal(signal.SIGTERM, terminate)


def command_line() -> int:
    """The `polyglot-distil` program: `main`, then leave the process group, if this process is one of
    several (`accelerate launch`), before the interpreter exits; `main` keeps it, as callers that run
    several commands in one process (`run`, the API, the tests) need it."""
    try:
        return main()
    finally:
        leave_process_group()


def program() -> None:
    """The `polyglot-distil` executable (and `python -m polyglot_distil`): `command_line`, then the
    process ends at once. The interpreter's own teardown, dismantling the module graph torch and
    transformers import, takes 1-2 s at the end of every command and does nothing the operating
    system does not: the exit handlers still run (locks, logging), every file was written in a
    `with` block and is closed, and the process group is left. A thread still running (none of
    ours is) gets the usual exit, which waits for it."""
    import atexit
    import threading

    try:
        code = command_line()
    except SystemExit as stop:  # --help, --version, a usage error: argparse's exit
        if not isinstance(stop.code, (int, type(None))):
            raise
        code = stop.code or 0
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)


def leave_process_group() -> None:
    """Destroy torch.distributed's default process group if one was made. Left to the interpreter's
    exit, gloo's threads can abort a process ("terminate called without an active exception")."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    program()
