"""A process's states and the two ways its run can end other than by returning: killed, suspended."""

from __future__ import annotations

from ..errors import ProcessCommsError, ProcessKilled
from ..wire.states import ProcessState  # re-exported: its home is wire/states.py

__all__ = ["ProcessState", "KilledError", "Suspended"]


class KilledError(ProcessKilled):
    """Raised to a waiter when the process it waits for was killed (reply type ``KilledError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "KilledError")


class Suspended(ProcessCommsError):
    """The worker stopped running the process (graceful shutdown); its task was handed back."""
