"""What ``list``, ``show``, ``report`` and ``status`` share about process records: times, hosts, the query."""

from __future__ import annotations

import argparse
import datetime
import re
import time

__all__ = ["age", "host_text", "parse_since", "when"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_since(text: str) -> float:
    """An argparse type: ``30m``, ``2h``, ``7d`` (that long ago) or an ISO date/time; epoch seconds."""
    match = _DURATION.match(text)
    if match:
        return time.time() - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration or a date: {text!r} (use e.g. 30m, 2h, 7d or 2024-05-01T12:00)"
        ) from None


def age(ctime: object, now: float | None = None) -> str:
    """How long ago ``ctime`` (epoch seconds) was: ``12s``, ``5m``, ``3h``, ``2d``."""
    if not isinstance(ctime, (int, float)):
        return ""
    seconds = max(0.0, (time.time() if now is None else now) - float(ctime))
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def when(stamp: object) -> str:
    """Epoch seconds as local ISO time (to the second), or ``-``."""
    if not isinstance(stamp, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(float(stamp)).isoformat(sep=" ", timespec="seconds")


def host_text(host: object) -> str:
    """A record's worker: ``hostname:os-pid``."""
    if isinstance(host, dict) and host.get("hostname"):
        return f"{host['hostname']}:{host.get('pid', '?')}"
    return ""
