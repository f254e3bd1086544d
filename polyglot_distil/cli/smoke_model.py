"""`polyglot-distil smoke-model`: a tiny random-weight model for offline trials and tests.

The options are declared with the stage (`polyglot_distil.models.smoke.SMOKE_MODEL`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.models.smoke import SMOKE_MODEL as COMMAND

__all__ = ["COMMAND"]
