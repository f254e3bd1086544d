"""`polyglot-distil quantize`: int8 weights, post-training (dynamic) or by quantization-aware
distillation (qat).

The options are declared with the stage (`polyglot_distil.distill.quantize.QUANTIZE`);
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.quantize import QUANTIZE as COMMAND

__all__ = ["COMMAND"]
