"""`polyglot-distil distil task`: phase 2, task distillation by lottery-ticket sparse fine-tuning.

The options are declared with the stage (`polyglot_distil.distill.task.TASK`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.task import TASK as COMMAND

__all__ = ["COMMAND"]
