"""The one base of the errors a user can fix: a bad config value, a missing or damaged data file, an
unreachable or refusing store, a run that diverged, an accelerator that is not there. Each message
says what was wrong and how to fix it; the commands (nnx-train, nnx-runs, nnx-rerun) catch UserError
and print it instead of a traceback."""


class UserError(Exception):
    """An error whose message tells the user the fix (the subclasses say of what)."""
