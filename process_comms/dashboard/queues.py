"""Task queue depth and consumers for the queues page, from the transport's one passive ``queue.declare``
(:mod:`process_comms.transports.rmq.inspect`, shared with ``process-comms queue``), on a worker thread."""

from __future__ import annotations

from typing import Any

from ..transports.rmq.inspect import inspect_task_queue_async

__all__ = ["inspect_queue"]


async def inspect_queue(urls: list[str], name: str, timeout: float) -> dict[str, Any]:
    """The task queue's depth and consumers (:func:`process_comms.transports.rmq.inspect.inspect_task_queue`)."""
    return await inspect_task_queue_async(urls, name, timeout)
