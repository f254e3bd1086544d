"""The one exception type for mistakes a user can make (bad paths, bad options, bad data).

The CLI prints a `UserError` as a single line `error: ...` and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix: the message says what was wrong, where, and what to do."""
