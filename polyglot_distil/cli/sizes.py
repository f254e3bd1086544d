"""`polyglot-distil sizes`: several student sizes from one config, with a size / latency / accuracy table.

Declares the command (words, help); its options are the fields of `SizesSettings`
(`polyglot_distil.sizes`), from which the parser is made, and it calls `run_sizes`, as the API does.
"""

from __future__ import annotations

from polyglot_distil import sizes
from polyglot_distil.options import Command

COMMAND = Command(("sizes",), help="several student sizes from one config: size / latency / accuracy table and plot",
                  description=sizes.__doc__.split("\n\n")[0],
                  run=sizes.run_sizes, settings=sizes.SizesSettings)
