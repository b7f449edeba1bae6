"""Object loaders now live in :mod:`process_comms.wire.messages`, beside the task bodies that carry a class's
identifier; this path keeps working (plumpy's ``plumpy.loaders`` has the same names)."""

from __future__ import annotations

from .messages import AllowListLoader, DefaultObjectLoader, ObjectLoader, get_object_loader, set_object_loader

__all__ = ["ObjectLoader", "DefaultObjectLoader", "AllowListLoader", "get_object_loader", "set_object_loader"]
