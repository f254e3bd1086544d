"""`polyglot-distil verify`: prove a trimmed model equals its source on covered text.

Declares the command (words, help); its options are the fields of `VerifySettings`
(`polyglot_distil.vocab.verify`), from which the parser is made, and it calls `run_verify`, as `run`
and the API do.
"""

from __future__ import annotations

from polyglot_distil.options import Command
from polyglot_distil.vocab import verify

COMMAND = Command(("verify",), help="prove a trimmed model equals the original on covered text",
                  description=verify.__doc__.split("\n\n")[0],
                  run=verify.run_verify, settings=verify.VerifySettings)
