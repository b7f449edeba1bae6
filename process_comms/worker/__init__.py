"""The worker side: the Process base class, the launcher that runs tasks, the Worker, and persistence."""

from .worker import Worker

__all__ = ["Worker"]
