"""Our launch options (a label, a time limit): where they travel so that plumpy peers never see them.

plumpy 0.26's ``ProcessLauncher.__call__`` reads only ``task["task"]`` and ``task["args"]`` and passes the
args as keyword arguments to ``_launch``/``_create`` (``src/plumpy/process_comms.py``): an unknown key in
``args`` would be a ``TypeError`` there, and one in ``init_kwargs`` would reach the process class. So the
options travel beside them, in a top-level key of the task body (:data:`LAUNCH_OPTIONS_KEY`) that plumpy's
launcher never reads, and only when an option is given: a launch without options is byte for byte
plumpy's (``tests/integration/test_launch_options_plumpy.py`` launches one with options on a plumpy worker).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, NamedTuple

from ..errors import InvalidLaunchOption

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

#: The top-level key of a launch or create task body that holds our options (plumpy's launcher ignores it).
LAUNCH_OPTIONS_KEY: Final = "process_comms_options"
#: Longest label, in characters: a label is a name to find a process by, shown in every listing row.
LABEL_MAX_CHARS: Final = 200
#: Longest time limit, in seconds (a year): beyond it a typo, not a limit.
TIME_LIMIT_MAX: Final = 365 * 24 * 3600.0


class LaunchOptions(NamedTuple):
    """The options of one launch: its label and its time limit in seconds (each None when not given)."""

    label: str | None = None
    time_limit: float | None = None


def check_label(label: object) -> str | None:
    """``label`` if it is None or a string of at most :data:`LABEL_MAX_CHARS` characters; else
    :class:`InvalidLaunchOption`."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidLaunchOption(f"a label must be a string, not {type(label).__name__}")
    if len(label) > LABEL_MAX_CHARS:
        raise InvalidLaunchOption(f"a label has at most {LABEL_MAX_CHARS} characters, this one has {len(label)}")
    return label


def check_time_limit(seconds: object) -> float | None:
    """``seconds`` as a float if it is None or a number above 0 and at most :data:`TIME_LIMIT_MAX`; else
    :class:`InvalidLaunchOption`."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidLaunchOption(f"a time limit must be a number of seconds, not {type(seconds).__name__}")
    value = float(seconds)
    if not math.isfinite(value) or value <= 0 or value > TIME_LIMIT_MAX:
        raise InvalidLaunchOption(f"a time limit must be above 0 and at most {TIME_LIMIT_MAX:g} s, not {seconds!r}")
    return value


def with_launch_options(body: dict[str, object], label: object = None, time_limit: object = None) -> dict[str, object]:
    """``body`` (a launch or create task) with our options checked and added; unchanged when none is given."""
    options = {"label": check_label(label), "time_limit": check_time_limit(time_limit)}
    given = {key: value for key, value in options.items() if value is not None}
    return {**body, LAUNCH_OPTIONS_KEY: given} if given else body


def launch_options_of(task: Mapping[str, object]) -> LaunchOptions:
    """The options a task body carries (none: a plumpy client's task); :class:`InvalidLaunchOption` if they
    are out of bounds or not a mapping."""
    options = task.get(LAUNCH_OPTIONS_KEY)
    if options is None:
        return LaunchOptions()
    if not isinstance(options, Mapping):
        raise InvalidLaunchOption(f"{LAUNCH_OPTIONS_KEY!r} must be a mapping, not {type(options).__name__}")
    return LaunchOptions(check_label(options.get("label")), check_time_limit(options.get("time_limit")))


def time_limit_reason(time_limit: float) -> str:
    """What a process killed by its time limit says: ``time limit of 30 s reached``."""
    return f"time limit of {time_limit:g} s reached"
