"""The README's and the docs pages' relative links resolve: every `[text](target)` that is not a
web address points to a file of the checkout, and its `#anchor`, if any, to a heading of that
page (GitHub's anchor of it). docs/index.md lists every page under docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `[x](y)` in code is code, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", prose(page.read_text(encoding="utf-8")), flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def links() -> list[tuple[str, str]]:
    return [(str(page.relative_to(ROOT)), target) for page in PAGES
            for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
            if not re.match(r"[a-z]+:", target)]  # https:, mailto: are not files


@pytest.mark.parametrize("page,target", links(), ids=[f"{p} -> {t}" for p, t in links()])
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = ((ROOT / page).parent / path).resolve() if path else ROOT / page
    assert file.exists(), f"{page}: {target} points to a missing {file}"
    assert ROOT.resolve() in file.parents or file == ROOT.resolve(), f"{page}: {target} leaves the checkout"
    if anchor:
        assert anchor in anchors(file), f"{page}: no heading of {file.name} has the anchor #{anchor}"


def test_the_anchors_are_githubs():
    page = ROOT / "docs" / "trimming.md"
    assert {"what-trim-supports", "trim-mbert-to-english--french"} <= anchors(page)


def test_the_docs_index_lists_every_page():
    listed = set(LINK.findall((ROOT / "docs" / "index.md").read_text(encoding="utf-8")))
    pages = {page.name for page in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= listed, f"docs/index.md does not list {sorted(pages - listed)}"
