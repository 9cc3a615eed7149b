"""The one error type that the CLI turns into a one-line message and exit code 2."""


class SwiprError(Exception):
    """Bad input from a user: the message names the file, key or row and what is wrong."""
