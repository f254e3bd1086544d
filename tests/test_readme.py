"""The README's commands are real: every `polyglot-distil ...` line in its code blocks parses
with the command's own parser (flags and subcommands exist), and the set-up commands exist."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from polyglot_distil.cli import build_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if "polyglot_distil " in line:  # python -m polyglot_distil under a launcher
                line = "polyglot-distil " + line.split("polyglot_distil ", 1)[1]
            if line.startswith("polyglot-distil ") and " ..." not in line:  # "..." elides options
                commands.append(line)
    return commands


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    assert "scripts/demo.sh" in first_block and "scripts/test.sh" in first_block
    assert (ROOT / "scripts" / "demo.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    argv = shlex.split(command.replace("$i", "0").replace("$R", "0").replace("$HEAD_IP", "h"))[1:]
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown flag or command


def test_readme_has_commands_for_every_stage():
    used = {shlex.split(c)[1] for c in readme_commands()}
    assert {"count", "merge", "trim", "verify", "student", "distil", "finetune", "eval", "run"} <= used


def test_the_from_python_snippet_runs(tmp_path, tiny_bert_dir, monkeypatch):
    """The README's "From Python" block, run as written, in a folder laid out like the project
    after scripts/demo.sh (the smoke teacher at out/demo/teacher, the bundled corpora)."""
    import shutil

    snippet = re.search(r"## From Python\n.*?```python\n(.*?)```", README, flags=re.S).group(1)
    (tmp_path / "out" / "demo").mkdir(parents=True)
    shutil.copytree(tiny_bert_dir, tmp_path / "out" / "demo" / "teacher")
    (tmp_path / "corpora").symlink_to(ROOT / "corpora")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md (From Python)", "exec"), namespace)
    report = namespace["report"]
    assert report["params_after"] < report["params_before"]
    assert (tmp_path / "out" / "py" / "trimmed" / "model.safetensors").is_file()
    assert namespace["checked"]["exit_status"] == 0
