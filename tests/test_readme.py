"""The README's and the docs pages' commands are real: every `polyglot-distil ...` line in their
code blocks parses with the command's own parser (flags and subcommands exist), the set-up
commands exist, and the README stays a short front page (the rest lives under docs/)."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from polyglot_distil.cli import build_parser

README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README and every docs page


def commands_of(text: str) -> list[str]:
    """The `polyglot-distil ...` lines of a Markdown text's bash blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if "polyglot_distil " in line:  # python -m polyglot_distil under a launcher
                line = "polyglot-distil " + line.split("polyglot_distil ", 1)[1]
            if line.startswith("polyglot-distil ") and " ..." not in line:  # "..." elides options
                commands.append(line)
    return commands


def readme_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the README and the docs pages."""
    return [(str(page.relative_to(ROOT)), command) for page in PAGES
            for command in commands_of(page.read_text(encoding="utf-8"))]


def test_readme_is_a_short_front_page_that_links_the_docs_index():
    assert len(README.splitlines()) <= 200
    assert "(docs/index.md)" in README


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    assert "scripts/demo.sh" in first_block and "scripts/test.sh" in first_block
    assert (ROOT / "scripts" / "demo.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("page,command", readme_commands(), ids=[f"{p}: {c}" for p, c in readme_commands()])
def test_readme_command_parses(page, command):
    argv = shlex.split(command.replace("$i", "0").replace("$R", "0").replace("$HEAD_IP", "h"))[1:]
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown flag or command


def test_readme_has_commands_for_every_stage():
    used = {shlex.split(command)[1] for _, command in readme_commands()}
    assert {"count", "merge", "trim", "verify", "student", "distil", "finetune", "eval", "run"} <= used


@pytest.mark.slow
def test_the_from_python_snippet_runs(tmp_path, tiny_bert_dir, monkeypatch):
    """The README's "From Python" block, run as written, in a folder laid out like the project
    after scripts/demo.sh --smoke (the smoke teacher at out/demo/teacher, the bundled corpora)."""
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


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header line starts with `header`: first cell -> cells."""
    lines = text.split(header, 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_readmes_families_table_agrees_with_the_full_one():
    """The README's short table (what each family refuses) has the rows of docs/families.md, and a
    family refuses one `--init...` option there per ✗ in the full table."""
    full = table_rows((ROOT / "docs" / "families.md").read_text(encoding="utf-8"), "| family (checkpoints) | student")
    short = table_rows(README, "| family (checkpoints) | refused |")
    assert list(short) == list(full) and len(full) == 9
    for family, cells in full.items():
        refused = short[family][0]
        assert refused.count("--init") == " ".join(cells).count("✗"), family
        assert (refused == "nothing") == ("✗" not in " ".join(cells)), family
