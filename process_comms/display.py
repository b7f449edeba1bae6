"""Kept import path (documented since 0.1.0): display helpers now live in :mod:`process_comms.client.display`."""

from .client.display import *  # noqa: F403
from .client.display import __all__  # noqa: F401
