"""One table renderer for every table polyglot-distil prints or writes.

`text_table` lines up columns for a terminal (first column left-aligned, the rest right-aligned,
as numbers read best); `markdown_table` writes a GitHub-flavoured Markdown table for reports and
model cards.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def text_table(rows: Sequence[Sequence[object]], rule: bool = False) -> str:
    """`rows[0]` is the header; `rule` draws a dashed line under it."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The table's lines (header, separator, one line per row)."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
