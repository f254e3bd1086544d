"""`polyglot-distil eval xnli`: zero-shot XNLI, a model and its teacher side by side.

Declares the command (words, help); its options are the fields of `XNLISettings`
(`polyglot_distil.eval.xnli`), from which the parser is made, and it calls `run_eval_xnli`, as `run`
and the API do.
"""

from __future__ import annotations

from polyglot_distil.eval import xnli
from polyglot_distil.options import Command

COMMAND = Command(("eval", "xnli"), help="zero-shot XNLI per language, with a teacher side by side",
                  description=xnli.__doc__, raw_description=True,
                  group_help={"eval": "evaluate a model (zero-shot XNLI: accuracy, loyalty, efficiency)"},
                  run=xnli.run_eval_xnli, settings=xnli.XNLISettings)
