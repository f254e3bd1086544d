"""`polyglot-distil eval xnli`: zero-shot XNLI, a model and its teacher side by side.

The options are declared with the stage (`polyglot_distil.eval.xnli.XNLI`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.eval.xnli import XNLI as COMMAND

__all__ = ["COMMAND"]
