"""`polyglot-distil distil general`: phase 1, bilingual distillation on masked-LM text.

Declares the command (words, help); its options are the fields of `GeneralSettings`
(`polyglot_distil.distill.general`), from which the parser is made, and it calls
`run_distil_general`, as `run` and the API do.
"""

from __future__ import annotations

from polyglot_distil.distill import general
from polyglot_distil.options import Command

DISTIL_GROUP_HELP = "distil a compact student (general phase, task phase)"

COMMAND = Command(("distil", "general"), help="phase 1: distil a bilingual student on masked-LM text",
                  description=general.__doc__.split("\n\n")[0],
                  group_help={"distil": DISTIL_GROUP_HELP},
                  run=general.run_distil_general, settings=general.GeneralSettings)
