"""The names both sides of the protocol must spell alike: broadcast subjects and task queue names."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_QUEUE", "WORKERS_SUBJECT", "queue_name"]

#: The subject of the ``workers`` broadcast request (client/controller.py sends it, worker/_fleet.py answers it).
WORKERS_SUBJECT: Final = "workers"
#: The name callers give for the installation's default task queue (as ``launch_process(queue=...)`` takes it).
DEFAULT_QUEUE: Final = "default"


def queue_name(task_queue: str, queue: str | None) -> str:
    """The broker's name of task queue ``queue`` (None or ``default``: the default task queue itself)."""
    if queue is None or queue == DEFAULT_QUEUE:
        return task_queue
    if not queue or any(ch in queue for ch in "#*") or len(queue.encode()) > 200:
        raise ValueError(f"invalid task queue name {queue!r}: use letters, digits, '-', '_' or '.'")
    return f"{task_queue}.{queue}"
