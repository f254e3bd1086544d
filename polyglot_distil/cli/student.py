"""`polyglot-distil student`: build a compact student from a teacher.

The settings and the stage function are `polyglot_distil.distill.student_stage` (where `run` finds them
too); `polyglot_distil.cli` builds this command's parser from them and calls the stage function.
"""

from polyglot_distil.distill.student_stage import STUDENT as COMMAND

__all__ = ["COMMAND"]
