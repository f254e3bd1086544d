"""`polyglot-distil student`: build a compact student from a teacher.

Declares the command (words, help); its options are the fields of `StudentSettings`
(`polyglot_distil.distill.student_stage`), from which the parser is made, and it calls
`run_student`, as `run` and the API do.
"""

from __future__ import annotations

from polyglot_distil.distill import student_stage
from polyglot_distil.options import Command

COMMAND = Command(("student",), help="build a compact student from a teacher",
                  description="Build a compact student from a teacher: fewer layers, optionally a narrower "
                              "hidden size.",
                  run=student_stage.run_student, settings=student_stage.StudentSettings)
