"""Our launch options now live in :mod:`process_comms.wire.messages` with the task bodies they travel in;
this path keeps working."""

from __future__ import annotations

from .messages import (
    LABEL_MAX_CHARS,
    LAUNCH_OPTIONS_KEY,
    TIME_LIMIT_MAX,
    LaunchOptions,
    check_label,
    check_time_limit,
    launch_options_of,
    time_limit_reason,
    with_launch_options,
)

__all__ = [
    "LABEL_MAX_CHARS",
    "LAUNCH_OPTIONS_KEY",
    "TIME_LIMIT_MAX",
    "LaunchOptions",
    "check_label",
    "check_time_limit",
    "launch_options_of",
    "time_limit_reason",
    "with_launch_options",
]
