"""`polyglot-distil distil task`: phase 2, task distillation by lottery-ticket sparse fine-tuning.

Declares the command (words, help); its options are the fields of `TaskSettings`
(`polyglot_distil.distill.task`), from which the parser is made, and it calls `run_distil_task`, as
`run` and the API do.
"""

from __future__ import annotations

from polyglot_distil.cli.distil_general import DISTIL_GROUP_HELP
from polyglot_distil.distill import task
from polyglot_distil.options import Command

COMMAND = Command(("distil", "task"), help="phase 2: sparse task distillation from a fine-tuned teacher",
                  description=task.__doc__.split("\n\n")[0],
                  group_help={"distil": DISTIL_GROUP_HELP}, run=task.run_distil_task, settings=task.TaskSettings)
