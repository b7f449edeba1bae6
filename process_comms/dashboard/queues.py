"""Task queue depth and consumers for the queues page, from the transport's one passive ``queue.declare``
(:mod:`process_comms.transports.rmq.inspect`, shared with ``process-comms queue``), on a worker thread."""

from __future__ import annotations

from typing import TypedDict

from ..transports.rmq.inspect import inspect_task_queue_async

__all__ = ["QueueDepth", "inspect_queue"]


class QueueDepth(TypedDict):
    """A task queue's depth and consumers (``GET /api/queues``, the queue gauges)."""

    queue: str
    exists: bool
    messages: int
    consumers: int


async def inspect_queue(urls: list[str], name: str, timeout: float) -> QueueDepth:
    """The task queue's depth and consumers (:func:`process_comms.transports.rmq.inspect.inspect_task_queue`)."""
    found = await inspect_task_queue_async(urls, name, timeout)
    return {
        "queue": str(found["queue"]),
        "exists": bool(found["exists"]),
        "messages": _count(found["messages"]),
        "consumers": _count(found["consumers"]),
    }


def _count(value: object) -> int:
    """A count from the broker's answer (an int; anything else counts as none)."""
    return value if isinstance(value, int) else 0
