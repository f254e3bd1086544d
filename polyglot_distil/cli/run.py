"""`polyglot-distil run CONFIG.yaml`: the whole pipeline from one config.

The options are declared with the stage (`polyglot_distil.pipeline.RUN`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.pipeline import RUN as COMMAND

__all__ = ["COMMAND"]
