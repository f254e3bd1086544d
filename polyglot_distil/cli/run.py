"""`polyglot-distil run CONFIG.yaml`: the whole pipeline from one config.

Declares the command (words, help); its options are the fields of `RunSettings`
(`polyglot_distil.pipeline`), from which the parser is made, and it calls `run_run`, as the API
does.
"""

from __future__ import annotations

from polyglot_distil import pipeline
from polyglot_distil.options import Command

COMMAND = Command(("run",), help="run the whole pipeline from one YAML config",
                  description=pipeline.__doc__.split("\n\n")[0],
                  run=pipeline.run_run, settings=pipeline.RunSettings)
