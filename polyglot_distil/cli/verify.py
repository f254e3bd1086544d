"""`polyglot-distil verify`: prove a trimmed model equals its source on covered text.

The options are declared with the stage (`polyglot_distil.vocab.verify.VERIFY`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.vocab.verify import VERIFY as COMMAND

__all__ = ["COMMAND"]
