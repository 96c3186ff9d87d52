"""Errors a user can act on: each names where the problem is (file, line, field or config key)."""


class RLHFError(Exception):
    """Base class for errors the CLI reports as one line and exit status 2, without a traceback."""


class DataError(RLHFError):
    """A data file cannot be used: message starts with `file:line` and names the field."""

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where, self.field, self.detail = where, field, message
        text = f"{where}: field '{field}': {message}" if field else f"{where}: {message}"
        super().__init__(text)


class ConfigError(RLHFError):
    """A configuration file or command-line override is invalid."""


class NonFiniteError(RLHFError, FloatingPointError):
    """A loss, log-prob or score became NaN or inf during training; names the step and the quantity."""
