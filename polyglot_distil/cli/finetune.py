"""`polyglot-distil finetune`: the task teacher, fine-tuned on English NLI.

The options are declared with the stage (`polyglot_distil.distill.finetune.FINETUNE`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.finetune import FINETUNE as COMMAND

__all__ = ["COMMAND"]
