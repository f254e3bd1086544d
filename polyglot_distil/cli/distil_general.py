"""`polyglot-distil distil general`: phase 1, bilingual distillation on masked-LM text.

The options are declared with the stage (`polyglot_distil.distill.general.GENERAL`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.general import GENERAL as COMMAND

__all__ = ["COMMAND"]
