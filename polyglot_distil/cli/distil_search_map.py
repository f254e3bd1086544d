"""`polyglot-distil distil search-map`: rank student-to-teacher layer mappings by short phase-1 runs.

Declares the command (words, help); its options are the fields of `SearchMapSettings`
(`polyglot_distil.distill.layer_search`), from which the parser is made, and it calls
`run_search_map`, as `run` and the API do.
"""

from __future__ import annotations

from polyglot_distil.cli.distil_general import DISTIL_GROUP_HELP
from polyglot_distil.distill import layer_search
from polyglot_distil.options import Command

COMMAND = Command(("distil", "search-map"),
                  help="find the teacher layer each student layer should imitate (short phase-1 runs)",
                  description=layer_search.__doc__.split("\n\n")[0], group_help={"distil": DISTIL_GROUP_HELP},
                  run=layer_search.run_search_map, settings=layer_search.SearchMapSettings)
