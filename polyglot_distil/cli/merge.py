"""`polyglot-distil merge`: add counts files (shards) into one.

Declares the command (words, help); its options are the fields of `MergeSettings`
(`polyglot_distil.vocab.count`), from which the parser is made, and it calls `run_merge`, as the API
does.
"""

from __future__ import annotations

from polyglot_distil.options import Command
from polyglot_distil.vocab import count

COMMAND = Command(("merge",), help="add counts files (e.g. shards) into one",
                  run=count.run_merge, settings=count.MergeSettings)
