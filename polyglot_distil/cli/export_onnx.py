"""`polyglot-distil export onnx`: an ONNX graph of a model, checked with onnxruntime against PyTorch.

The options are declared with the stage (`polyglot_distil.models.onnx_model.EXPORT_ONNX`);
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.models.onnx_model import EXPORT_ONNX as COMMAND

__all__ = ["COMMAND"]
