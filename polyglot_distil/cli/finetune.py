"""`polyglot-distil finetune`: the task teacher, fine-tuned on English NLI.

Declares the command (words, help); its options are the fields of `FinetuneSettings`
(`polyglot_distil.distill.finetune`), from which the parser is made, and it calls `run_finetune`, as
`run` and the API do.
"""

from __future__ import annotations

from polyglot_distil.distill import finetune
from polyglot_distil.options import Command

COMMAND = Command(("finetune",), help="fine-tune a model on English NLI (the task teacher)",
                  description=finetune.__doc__.split("\n\n")[0],
                  run=finetune.run_finetune, settings=finetune.FinetuneSettings)
