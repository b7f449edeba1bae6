"""A process's states and the two ways its run can end other than by returning: killed, suspended."""

from __future__ import annotations

import enum

from ..errors import ProcessCommsError, ProcessKilled

__all__ = ["ProcessState", "KilledError", "Suspended"]


class ProcessState(enum.Enum):
    """A process's state, named as plumpy names them."""

    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    FINISHED = "finished"
    EXCEPTED = "excepted"
    KILLED = "killed"

    @property
    def terminal(self) -> bool:
        """True for finished, excepted and killed."""
        return self in (ProcessState.FINISHED, ProcessState.EXCEPTED, ProcessState.KILLED)


class KilledError(ProcessKilled):
    """Raised to a waiter when the process it waits for was killed (reply type ``KilledError``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "KilledError")


class Suspended(ProcessCommsError):
    """The worker stopped running the process (graceful shutdown); its task was handed back."""
