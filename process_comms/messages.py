"""Kept import path (documented since 0.1.0): the wire format now lives in :mod:`process_comms.wire.messages`."""

from .wire.messages import *  # noqa: F403
from .wire.messages import __all__  # noqa: F401
