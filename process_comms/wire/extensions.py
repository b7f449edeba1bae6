"""Our wire extensions in AMQP headers now live in :mod:`process_comms.wire.messages`; this path keeps working."""

from __future__ import annotations

from .messages import (
    NO_PENDING,
    SENDER,
    SENDER_TYPE,
    SUBJECT,
    broadcast_headers,
    broadcast_unwanted,
    task_headers,
    wants_pending,
)

__all__ = [
    "NO_PENDING",
    "SENDER",
    "SENDER_TYPE",
    "SUBJECT",
    "broadcast_headers",
    "broadcast_unwanted",
    "task_headers",
    "wants_pending",
]
