"""What a process's status says, whoever answers it, now lives in :mod:`process_comms.wire.messages`; this path
keeps working."""

from __future__ import annotations

from .messages import LOST_TYPE, UNENDED_STATES, is_lost, lost_record, status_of_record

__all__ = ["LOST_TYPE", "UNENDED_STATES", "is_lost", "lost_record", "status_of_record"]
