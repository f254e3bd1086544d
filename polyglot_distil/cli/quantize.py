"""`polyglot-distil quantize`: int8 weights, post-training (dynamic) or by quantization-aware
distillation (qat).

Declares the command (words, help); its options are the fields of `QuantizeSettings`
(`polyglot_distil.distill.quantize`), from which the parser is made, and it calls `run_quantize`, as
the API does.
"""

from __future__ import annotations

from polyglot_distil.distill import quantize
from polyglot_distil.options import Command

COMMAND = Command(("quantize",), help="int8 weights: post-training (dynamic) or quantization-aware distillation (qat)",
                  description=quantize.__doc__.split("\n\n")[0],
                  run=quantize.run_quantize, settings=quantize.QuantizeSettings)
