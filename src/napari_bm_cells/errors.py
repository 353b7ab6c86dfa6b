"""Errors with messages meant for users (shown without a traceback by the CLI)."""


class InputError(ValueError):
    """Bad input file, weights or options; the message names the file and the fix."""


class Cancelled(RuntimeError):
    """Raised inside the pipeline when the caller asked it to stop."""
