"""A process's states now live in :mod:`process_comms.wire.types`; this path keeps working."""

from __future__ import annotations

from .types import ACTIVE_STATES, TERMINAL_STATES, UNENDED_STATES, ProcessState, is_terminal

__all__ = ["ACTIVE_STATES", "ProcessState", "TERMINAL_STATES", "UNENDED_STATES", "is_terminal"]
