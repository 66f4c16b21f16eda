"""The one error type the CLI turns into a single line and a non-zero exit."""


class FastpathError(Exception):
    """A user-facing failure: the message names the cause and, where there is one, the fix."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}; {fix}")


class CapabilityError(FastpathError):
    """The machine lacks a kernel feature, tool or privilege that the command needs."""

    exit_code = 2
