"""The names both sides spell alike now live in :mod:`process_comms.wire.types`; this path keeps working."""

from __future__ import annotations

from .types import DEFAULT_QUEUE, WORKERS_SUBJECT, queue_name

__all__ = ["DEFAULT_QUEUE", "WORKERS_SUBJECT", "queue_name"]
