"""A process's states, named as plumpy names them: the one home of the state names.

The values are the strings plumpy 0.26's ``plumpy.ProcessState`` carries (``src/plumpy/base/state_machine.py``
and ``src/plumpy/process_states.py`` in https://github.com/aiidateam/plumpy), so a state travels as the same
bytes whichever side sends it; ``tests/wire/test_types.py`` compares them with plumpy's.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ACTIVE_STATES", "ProcessState", "TERMINAL_STATES", "UNENDED_STATES", "is_terminal"]


class ProcessState(str, enum.Enum):
    """A process's state; a ``str`` so that its value is what travels (``ProcessState.RUNNING == "running"``)."""

    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    FINISHED = "finished"
    EXCEPTED = "excepted"
    KILLED = "killed"

    def __str__(self) -> str:  # as a plain Enum's, on every Python (3.10 formats a str mix-in by its value)
        return f"ProcessState.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @property
    def terminal(self) -> bool:
        """True for finished, excepted and killed."""
        return self in (ProcessState.FINISHED, ProcessState.EXCEPTED, ProcessState.KILLED)


#: Process states after which nothing more happens.
TERMINAL_STATES: Final = (ProcessState.FINISHED.value, ProcessState.EXCEPTED.value, ProcessState.KILLED.value)
#: The states of a process that has not ended (someone must hold it, or it is lost or parked).
UNENDED_STATES: Final = (ProcessState.CREATED.value, ProcessState.RUNNING.value, ProcessState.WAITING.value)
#: What ``--active`` means: the states of a process that has not ended.
ACTIVE_STATES: Final = UNENDED_STATES


def is_terminal(state: str | None) -> bool:
    """True if ``state`` (a short state name such as ``finished``) is one after which nothing happens."""
    return state in TERMINAL_STATES
