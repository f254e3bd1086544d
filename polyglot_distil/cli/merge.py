"""`polyglot-distil merge`: add counts files (shards) into one.

The options are declared with the stage (`polyglot_distil.vocab.count.MERGE`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.vocab.count import MERGE as COMMAND

__all__ = ["COMMAND"]
