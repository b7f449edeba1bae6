"""Fixtures of the fault tests (defined in _support)."""

from ._support import prefix, workers

__all__ = ["prefix", "workers"]
