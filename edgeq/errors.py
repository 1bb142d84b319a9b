"""The one exception type a user sees: a clear sentence, no traceback, exit code 2."""


class EdgeqError(Exception):
    """Bad input or a state edgeq refuses to work from; the message says what and how to fix it."""
