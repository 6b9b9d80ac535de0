"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class MTLError(Exception):
    """A problem with the user's input (file, row, flag) rather than a bug in mtl."""
