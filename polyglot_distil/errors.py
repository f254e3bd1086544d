"""The one exception type for mistakes a user can make (bad paths, bad options, bad data).

The CLI prints a `UserError` as a single line `error: ...` and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix: the message says what was wrong, where, and what to do.

    `lines` are what the failing stage had for its reader before it stopped (trim's quick
    verification table, which says where the trimmed model differed): the command prints them on
    stdout before its one-line error."""

    def __init__(self, *args, lines: list[str] | tuple[str, ...] = ()):
        super().__init__(*args)
        self.lines = list(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, SLURM preemption, Kubernetes), handled as Ctrl-C is: the same cleanup runs
    (temporaries removed, locks released, a training run's checkpoint saved), exit status 143."""


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a signal is turned into: Terminated for SIGTERM, KeyboardInterrupt otherwise."""
    import signal

    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
