"""`polyglot-distil trim`: keep the vocabulary some languages use.

Declares the command (words, help); its options are the fields of `TrimSettings`
(`polyglot_distil.vocab.trim`), from which the parser is made, and it calls `run_trim`, as `run` and
the API do.
"""

from __future__ import annotations

from polyglot_distil.options import Command
from polyglot_distil.vocab import trim

COMMAND = Command(("trim",), help="keep the vocabulary some languages use (model + tokenizer)",
                  description=trim.__doc__.split("\n\n")[0],
                  run=trim.run_trim, settings=trim.TrimSettings)
