"""Exceptions with messages meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class IMERError(Exception):
    """Base class of the errors imer raises on purpose."""


class DataError(IMERError):
    """Bad or missing input data: the message names the file and the problem."""


class ConfigError(IMERError):
    """An invalid configuration value or an unknown name."""


class UsageError(IMERError):
    """A malformed command line (unknown option, missing argument)."""


class Interrupted(KeyboardInterrupt):
    """A run or sweep stopped by a signal (SIGTERM, SIGINT); the command ends with status 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise :class:`Interrupted` (a clean stop like Ctrl-C) in the main thread; returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
