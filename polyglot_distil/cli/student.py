"""`polyglot-distil student`: build a compact student from a teacher.

The options are declared with the stage (`polyglot_distil.models.student.STUDENT`), where `run` finds them too;
`polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.models.student import STUDENT as COMMAND

__all__ = ["COMMAND"]
