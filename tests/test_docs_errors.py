"""docs/errors.md, the list of bad inputs the project handles, is checked against the tests: each
row names a test that exists and asserts the row's bold words, and the library says them."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from conftest import ROOT

DOC = ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\| (?P<input>[^|]+) \| (?P<seen>.+) \| `(?P<test>tests/[\w/]+\.py::\w+)` \|$")


def rows() -> list[dict]:
    found = [m.groupdict() for line in DOC.read_text(encoding="utf-8").splitlines() if (m := ROW.match(line))]
    assert len(found) >= 25, "the table rows are read"
    return found


def source_of(path: str, name: str) -> str | None:
    lines, tree = parsed(path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "".join(lines[first - 1:node.end_lineno])
    return None


@functools.lru_cache(maxsize=None)
def parsed(path: str) -> tuple[list[str], ast.Module]:
    """A test file's lines and syntax tree, parsed once (many rows name the same file)."""
    source = (ROOT / path).read_text(encoding="utf-8")
    return source.splitlines(keepends=True), ast.parse(source)


def library_source() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in (ROOT / "polyglot_distil").rglob("*.py"))


def problems(row: dict, library: str) -> list[str]:
    """What is wrong with one row: its test is missing, marks nothing, or does not assert the bold
    words; or the library never says them (numbers and paths in them are the example's)."""
    path, name = row["test"].split("::")
    source = source_of(path, name)
    if source is None:
        return [f"{row['test']} does not exist"]
    bold = re.findall(r"\*\*(.+?)\*\*", row["seen"])
    if not bold:
        return [f"row {row['input']!r} marks no words in bold"]
    found = []
    for words in bold:
        if words not in source:
            found.append(f"{row['test']} does not check {words!r}")
        fixed = [w for w in words.split() if not any(c.isdigit() for c in w) and "/" not in w]
        if not all(w in library for w in fixed):
            found.append(f"the library never says {words!r}")
    return found


def test_every_row_names_a_test_that_asserts_its_words_and_the_library_says_them():
    library = library_source()
    assert [p for row in rows() for p in problems(row, library)] == []


def test_the_check_finds_a_row_whose_test_does_not_assert_it():
    library = library_source()
    planted = {"input": "x", "seen": "`error:` **ended without finishing**",
               "test": "tests/test_outputs.py::test_outputs_follow_the_umask"}
    assert problems(planted, library) == [f"{planted['test']} does not check 'ended without finishing'"]
    planted["test"] = "tests/test_outputs.py::test_no_such_test"
    assert "does not exist" in problems(planted, library)[0]
    planted.update(test="tests/test_outputs.py::test_a_stale_lock_is_reported_with_how_to_remove_it",
                   seen="**ended without finishing** and **words nobody wrote**")
    assert problems(planted, library) == [f"{planted['test']} does not check 'words nobody wrote'",
                                          "the library never says 'words nobody wrote'"]
