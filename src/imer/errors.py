"""Exceptions with messages meant for the user (the CLI prints them without a traceback)."""


class IMERError(Exception):
    """Base class of the errors imer raises on purpose."""


class DataError(IMERError):
    """Bad or missing input data: the message names the file and the problem."""


class ConfigError(IMERError):
    """An invalid configuration value or an unknown name."""


class UsageError(IMERError):
    """A malformed command line (unknown option, missing argument)."""
