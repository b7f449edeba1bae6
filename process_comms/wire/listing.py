"""The query of a process listing beyond one state: several states, a label, an order (one home for the
rules: the records route's worker, the store fallback of a controller and the CLI all use these).

Order: the default (``age``, newest first) is the one a listing pages through with a cursor
(worker/records_service.py). Any other order (``state``, ``class``, ``label``, or ``reverse``) sorts the
newest ``limit`` matching processes and answers them as one page, with no cursor beyond it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

from ..errors import InvalidTask
from .messages import check_label
from .types import ACTIVE_STATES

__all__ = [
    "ACTIVE_STATES",
    "CURSOR_ORDER_ONLY",
    "MAX_LIST_STATES",
    "SORTS",
    "check_listing",
    "is_paged_order",
    "row_matches",
    "sort_rows",
]

#: The orders a listing may ask for; ``age`` (newest first) is the default.
SORTS: Final = ("age", "state", "class", "label")
#: Why a cursor with another order is refused.
CURSOR_ORDER_ONLY: Final = "a cursor pages only the default order (age, newest first): other orders are one page"
#: Most states one listing may name (there are seven, and a kill request).
MAX_LIST_STATES: Final = 16


def check_listing(
    state: object, states: object, label: object, sort: object, reverse: object
) -> tuple[tuple[str, ...] | None, str | None, str, bool]:
    """``(states, label, sort, reverse)`` of a listing query: ``state`` and ``states`` merged (None: any state),
    the label bounded as at launch, the order (``age`` when None); :class:`InvalidTask` if one is malformed."""
    merged: list[str] = []
    if state is not None:
        if not isinstance(state, str):
            raise InvalidTask("'state' must be a string or null")
        merged.append(state)
    if states is not None:
        if isinstance(states, str) or not isinstance(states, (list, tuple)) or len(states) > MAX_LIST_STATES:
            raise InvalidTask(f"'states' must be a list of at most {MAX_LIST_STATES} state names, or null")
        if not all(isinstance(name, str) for name in states):
            raise InvalidTask("'states' must hold state names (strings)")
        merged += [name for name in states if name not in merged]
    if sort is None:
        sort = "age"
    if sort not in SORTS:
        raise InvalidTask(f"unknown sort {sort!r}: expected one of {', '.join(SORTS)}")
    if not isinstance(reverse, bool):
        raise InvalidTask("'reverse' must be true or false")
    return (tuple(merged) if merged else None), check_label(label), sort, reverse


def is_paged_order(sort: str, reverse: bool) -> bool:
    """True for the one order a cursor pages through: ``age``, newest first."""
    return sort == "age" and not reverse


def row_matches(row: Mapping[str, object], states: Sequence[str] | None, label: str | None) -> bool:
    """True if a summary is in one of ``states`` (None: any) and its label holds ``label`` (a substring,
    case-sensitive; None: any, also no label)."""
    if states is not None and row.get("state_name") not in states:
        return False
    if label is None:
        return True
    own = row.get("label")
    return isinstance(own, str) and label in own


#: A summary, or any row with a summary's keys.
Row = TypeVar("Row", bound=Mapping[str, object])


def _age(row: Mapping[str, object]) -> float:
    ctime = row.get("ctime") or 0.0
    return -float(ctime) if isinstance(ctime, (int, float, str)) else 0.0


def _key(sort: str) -> Callable[[Mapping[str, object]], tuple[bool, str, float]]:
    """A sort key; every key has one shape: (no label, text, minus the creation time)."""
    if sort == "state":
        return lambda row: (False, str(row.get("state_name") or ""), 0.0)
    if sort == "class":
        return lambda row: (False, str(row.get("class") or ""), 0.0)
    if sort == "label":  # processes without a label come after those with one
        return lambda row: (row.get("label") is None, str(row.get("label") or ""), 0.0)
    return lambda row: (False, "", _age(row))


def sort_rows(rows: Iterable[Row], sort: str, reverse: bool) -> list[Row]:
    """Summaries in ``sort`` order (``age``: newest first; the others ascending, newest first among equals),
    reversed with ``reverse``."""
    newest_first = sorted(rows, key=_key("age"))
    ordered = newest_first if sort == "age" else sorted(newest_first, key=_key(sort))  # stable: ties stay newest first
    return list(reversed(ordered)) if reverse else ordered
