"""`polyglot-distil sizes`: several student sizes from one config, with a size / latency / accuracy table.

The options are declared with the stage (`polyglot_distil.sizes.SIZES`); `polyglot_distil.cli` builds this
command's parser from them and calls the stage function.
"""

from polyglot_distil.sizes import SIZES as COMMAND

__all__ = ["COMMAND"]
