"""The package's layering (docs/ARCHITECTURE.md) holds: imports only go down, and no module
imports another that imports it back. Read from the source with `ast`, function-level imports
included, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "polyglot_distil"

# Lower number = lower layer. A module may import its own layer's modules and any lower layer's.
LAYERS = {
    "shared": 0,  # errors, outputs, tables, params, options, fingerprints
    "data": 1,
    "models": 2,
    "vocab": 3, "distill": 3, "eval": 3,
    "pipeline": 4, "api": 4, "sizes": 4,
    "cli": 5, "__main__": 5,
}
FORBIDDEN = {  # same-level imports that are not allowed either
    ("eval", "distill"), ("vocab", "distill"), ("vocab", "eval"),
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "shared"  # the package itself (__version__)
    head = parts[1]
    if head in LAYERS:
        return head
    return "shared"  # errors, outputs, tables, params, options


@functools.lru_cache(maxsize=None)
def _parsed(text: str) -> ast.Module:
    return ast.parse(text)


def tree(path: Path) -> ast.Module:
    """The file's syntax tree (parsed once per text: several checks read every module)."""
    return _parsed(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _walked(parsed: ast.Module) -> tuple[ast.AST, ...]:
    return tuple(ast.walk(parsed))


def nodes(path: Path) -> tuple[ast.AST, ...]:
    """Every node of the file's syntax tree (walked once: several checks go through every module)."""
    return _walked(tree(path))


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported polyglot_distil module, line) for every import in the file, at any depth."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes(path):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import submodule` imports the submodule; `from module import name` the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "polyglot_distil" or name.startswith("polyglot_distil."):
                while name not in known and "." in name:
                    name = name.rpartition(".")[0]
                out.append((name, node.lineno))
    return out


def uses_argparse(path: Path) -> int | None:
    for node in nodes(path):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return node.lineno
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return node.lineno
    return None


def test_imports_only_go_down():
    known = modules()
    problems = []
    for module, path in known.items():
        here = layer_of(module)
        for target, line in imports_of(module, path, known):
            there = layer_of(target)
            rel = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if LAYERS[there] > LAYERS[here] or (here, there) in FORBIDDEN:
                problems.append(f"{rel} ({here}) imports {known[target].relative_to(PACKAGE.parent)} ({there})")
        if LAYERS[here] < LAYERS["cli"] and (line := uses_argparse(path)):
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports argparse below cli/")
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_import_cycles():
    known = modules()
    graph = {m: sorted({t for t, _ in imports_of(m, p, known) if t != m}) for m, p in known.items()}
    # A module's package __init__ runs before it; that edge is not a cycle of the code's design.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                cycles.append(" -> ".join(str(known[c].relative_to(PACKAGE.parent)) for c in cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source,target,expected", [
    ("polyglot_distil.eval.xnli", "polyglot_distil.distill.general", "imports"),
    ("polyglot_distil.data.corpus", "polyglot_distil.models.loading", "imports"),
])
def test_the_check_sees_an_upward_import(tmp_path, monkeypatch, source, target, expected):
    """The check itself fails on a planted upward import (so it is not vacuous)."""
    known = modules()
    path = known[source]
    planted = tmp_path / path.name
    planted.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    import {target}\n",
                       encoding="utf-8")
    targets = [t for t, _ in imports_of(source, planted, known)]
    assert target in targets
    assert LAYERS[layer_of(target)] > LAYERS[layer_of(source)] or (layer_of(source), layer_of(target)) in FORBIDDEN


def test_the_command_line_is_built_without_torch_or_transformers():
    """`--help` and option errors answer at once: building the parser imports neither."""
    import subprocess
    import sys

    code = ("import sys; from polyglot_distil.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    assert result.stdout.strip() == "[]"


def namespace_parameters(path: Path) -> list[str]:
    """`file:line function(args)` for each function of `path` that takes a command-line namespace: a
    parameter whose attributes it reads (`args.out`) or that it hands to `getattr` / `vars`. (A
    torch hook's `args`, a tuple it indexes, is not one.)"""
    found = []
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path.name
    for node in nodes(path):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        read, handed = set(), False  # names whose attributes the function reads; getattr(args, ...)
        for inner in ast.walk(node):
            if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name):
                read.add(inner.value.id)
            handed = handed or (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
                                and inner.func.id in ("getattr", "vars", "hasattr") and bool(inner.args)
                                and isinstance(inner.args[0], ast.Name) and inner.args[0].id == "args")
        for parameter in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            name = parameter.arg
            if (name in read and name in ("args", "namespace", "ns")) or handed:
                found.append(f"{where}:{node.lineno} {node.name}({name})")
    return found


def test_no_library_function_takes_the_command_line_namespace():
    """Below cli/, a function takes its stage's settings dataclass or plain typed arguments, never
    the command line's `args`: its inputs are its signature."""
    found = [f for module, path in modules().items() if layer_of(module) != "cli" for f in namespace_parameters(path)]
    assert not found, "functions below cli/ that take a command-line namespace:\n" + "\n".join(found)


def test_the_namespace_check_sees_a_planted_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def load(args):\n    return args.model\n\n\ndef hook(module, args):\n    return args[0]\n\n\n"
                       "def save(args):\n    return getattr(args, 'save_dtype', None)\n", encoding="utf-8")
    assert namespace_parameters(planted) == ["planted.py:1 load(args)", "planted.py:9 save(args)"]


def test_every_stage_function_takes_its_settings_dataclass():
    """Each command's function is annotated with the dataclass its options are made from, and the
    options are exactly that dataclass's fields."""
    import dataclasses
    import inspect

    from polyglot_distil.cli import command_modules

    for module in command_modules():
        command = module.COMMAND
        parameters = list(inspect.signature(command.run).parameters.values())
        assert len(parameters) == 1 and parameters[0].annotation == command.settings.__name__, command.name
        assert [o.name for o in command.options] == [f.name for f in dataclasses.fields(command.settings)]


def test_no_command_is_declared_in_models():
    """models/ is the library of model code; a command (its settings, printing, `Command`) lives in
    a stage module above it or in cli/."""
    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for module, path in modules().items()
             if layer_of(module) == "models" for node in nodes(path)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Command"]
    assert not found, "commands declared in models/:\n" + "\n".join(found)


def _prints_on_stdout(path) -> list[str]:
    """Where the module at `path` prints without `file=` or hands `print` itself to be called."""
    called = {id(node.func) for node in nodes(path) if isinstance(node, ast.Call)}
    found = []
    for node in nodes(path):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                and not any(k.arg == "file" for k in node.keywords):
            found.append(f"{path.name}:{node.lineno} print(...)")
        elif isinstance(node, ast.Name) and node.id == "print" and id(node) not in called:
            found.append(f"{path.name}:{node.lineno} print passed as a function")
    return found


def test_no_module_below_the_command_layer_prints_on_stdout():
    """Stage functions return their reader lines (report["lines"]) and `cli.main` prints them;
    only `run`'s and `sizes`' own pipeline output (pipeline.py, sizes.py) is printed where it is made."""
    below = [path for module, path in modules().items() if layer_of(module) != "cli"
             and path.name not in ("pipeline.py", "sizes.py")]
    assert len(below) > 40 and PACKAGE / "vocab" / "count.py" in below
    assert [line for path in below for line in _prints_on_stdout(path)] == []
    assert "redirect_stdout" not in (PACKAGE / "api.py").read_text(encoding="utf-8")


def test_the_stdout_check_finds_a_planted_print(tmp_path):
    planted = tmp_path / "stage.py"
    planted.write_text("import sys\n\ndef run(log=print):\n    print('x', file=sys.stderr)\n    print('wrote x')\n",
                       encoding="utf-8")
    assert _prints_on_stdout(planted) == ["stage.py:3 print passed as a function", "stage.py:5 print(...)"]
