"""`polyglot-distil distil search-map`: rank student-to-teacher layer mappings by short phase-1 runs.

The options are declared with the stage (`polyglot_distil.distill.layer_search.SEARCH_MAP`); `polyglot_distil.cli`
builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.layer_search import SEARCH_MAP as COMMAND

__all__ = ["COMMAND"]
