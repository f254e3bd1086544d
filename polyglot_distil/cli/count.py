"""`polyglot-distil count`: token occurrences per language, as a Parquet table.

The options are declared with the stage (`polyglot_distil.vocab.count.COUNT`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.vocab.count import COUNT as COMMAND

__all__ = ["COMMAND"]
