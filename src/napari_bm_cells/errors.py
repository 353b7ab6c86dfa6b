"""Errors with messages meant for users (shown without a traceback by the CLI)."""


class InputError(ValueError):
    """Bad input file, weights or options; the message names the file and the fix."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    msg = str(exc).strip()
    return msg.splitlines()[0] if msg else type(exc).__name__
