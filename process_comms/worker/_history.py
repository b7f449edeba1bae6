"""A process record's state history, bounded (process_comms/worker/records.py): a sleeping process's
running/waiting back-and-forth is folded into one entry, and the oldest entries go past a count."""

from __future__ import annotations

from typing import Any

__all__ = ["CYCLE_EVENT", "MAX_HISTORY", "add_history"]

#: History entries a record keeps: the first (``created``) and the newest; the count of dropped ones is kept.
MAX_HISTORY = 200
#: Events whose back-and-forth (every ``sleep``) is folded into one entry with a count, first and last times.
_CYCLE_EVENTS = ("running", "waiting")
#: The event of that folded entry.
CYCLE_EVENT = "running/waiting"


def add_history(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` with ``entry`` added, bounded: a running/waiting back-and-forth (every ``sleep`` adds a pair)
    is folded into one :data:`CYCLE_EVENT` entry (``count`` transitions, first ``time``, ``last`` time) before
    the newest entry, and past :data:`MAX_HISTORY` entries the oldest after the first are dropped (counted in
    the first entry's ``dropped``). Mutates and returns ``history``."""
    event, last = entry.get("event"), history[-1] if history else None
    if (
        event in _CYCLE_EVENTS
        and "message" not in entry
        and last is not None
        and last.get("event") in _CYCLE_EVENTS
        and last.get("event") != event
        and "message" not in last
        and len(history) >= 2
    ):
        before = history[-2]
        if before.get("event") == CYCLE_EVENT:  # one more turn of the cycle: fold ``last`` into it
            before["count"] = int(before.get("count") or 0) + 1
            before["last"] = last.get("time")
            history[-1] = entry
            return history
        if before.get("event") == event and "message" not in before:  # event, other, event: a cycle starts
            history[-1] = {"event": CYCLE_EVENT, "count": 1, "time": last.get("time"), "last": last.get("time")}
    history.append(entry)
    if len(history) > MAX_HISTORY:
        drop = len(history) - MAX_HISTORY
        first = dict(history[0])
        first["dropped"] = int(first.get("dropped") or 0) + drop
        history[:] = [first, *history[1 + drop :]]
    return history
