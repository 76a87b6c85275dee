"""Errors a user can fix: bad path, unknown column, unusable target, ..."""


class UserError(ValueError):
    """A problem with the user's input, reported as one `error: ...` line (exit 2)."""


class PipelineFailed(RuntimeError):
    """A pipeline step failed for a reason that is not the user's input (exit 1)."""
