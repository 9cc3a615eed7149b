"""The one error type that the CLI turns into a one-line message and exit code 2."""


class SwiprError(Exception):
    """Bad input from a user: the message names the file, key or row and what is wrong."""

    exit_code = 2


class RunStopped(SwiprError):
    """A run that stopped itself for a reason it states (not bad input): exit status 1."""

    exit_code = 1


class FieldError(SwiprError):
    """A value a core type refuses: `field` names it, `problem` says what is wrong with it.
    The edge that read the value (a study file) adds where it came from."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem
