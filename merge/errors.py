"""Project exceptions. Every error a user can cause is a WarpError; the CLI prints it as one line."""


class WarpError(Exception):
    """Base of the project's user-facing errors (bad input, bad config, missing files)."""


class MergeError(WarpError, ValueError):
    """A merge got inputs it cannot combine: mismatched keys or shapes, parameters out of range."""
