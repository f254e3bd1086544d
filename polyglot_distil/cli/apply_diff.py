"""`polyglot-distil apply-diff`: the dense task model from a phase-1 student and its sparse diff.

Declares the command (words, help); its options are the fields of `ApplyDiffSettings`
(`polyglot_distil.distill.diff`), from which the parser is made, and it calls `run_apply_diff`, as
the API does.
"""

from __future__ import annotations

from polyglot_distil.distill import diff
from polyglot_distil.options import Command

COMMAND = Command(("apply-diff",), help="rebuild the dense task model from a phase-1 student and its diff",
                  description="Rebuild the dense task model of 'distil task' from the phase-1 student it was "
                              "trained from and its sparse diff (OUT/sparse_diff): the result equals the run's "
                              "best/ model bit for bit.",
                  run=diff.run_apply_diff, settings=diff.ApplyDiffSettings)
