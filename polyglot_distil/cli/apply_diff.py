"""`polyglot-distil apply-diff`: the dense task model from a phase-1 student and its sparse diff.

The options are declared with the stage (`polyglot_distil.distill.diff.APPLY_DIFF`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.diff import APPLY_DIFF as COMMAND

__all__ = ["COMMAND"]
