"""`polyglot-distil trim`: keep the vocabulary some languages use.

The options are declared with the stage (`polyglot_distil.vocab.trim.TRIM`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.vocab.trim import TRIM as COMMAND

__all__ = ["COMMAND"]
