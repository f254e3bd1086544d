"""`polyglot-distil count`: token occurrences per language, as a Parquet table.

Declares the command (words, help); its options are the fields of `CountSettings`
(`polyglot_distil.vocab.count`), from which the parser is made, and it calls `run_count`, as `run`
and the API do.
"""

from __future__ import annotations

from polyglot_distil.options import Command
from polyglot_distil.vocab import count

COMMAND = Command(("count",), help="count token occurrences per language (Parquet)",
                  description=count.__doc__.split("\n\n")[0],
                  run=count.run_count, settings=count.CountSettings)
