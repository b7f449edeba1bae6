"""Task queue depth and consumers for the queues page, from the transport's one passive ``queue.declare``
(:mod:`process_comms.transports.rmq.inspect`, shared with ``process-comms queue``), on a worker thread."""

from __future__ import annotations

from typing import Any

from ..transports.rmq.inspect import inspect_task_queue_async

__all__ = ["NO_WORKERS_API", "inspect_queue"]

#: Why the workers panel has no rows: the client has no call that lists workers (their host, slots, health).
NO_WORKERS_API = (
    "not available: the client has no API that lists workers yet (host, queues, slots, health); "
    "the task queue's consumer count is the number of workers taking tasks"
)


async def inspect_queue(urls: list[str], name: str, timeout: float) -> dict[str, Any]:
    """The task queue's depth and consumers (:func:`process_comms.transports.rmq.inspect.inspect_task_queue`)."""
    return await inspect_task_queue_async(urls, name, timeout)
