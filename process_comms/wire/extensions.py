"""Wire extensions between two process_comms ends, carried in AMQP message headers that kiwipy ignores.

kiwipy and plumpy send every message with an empty ``headers`` table and never read it (kiwipy builds its
messages in https://github.com/aiidateam/kiwipy/blob/main/src/kiwipy/rmq/messages.py), so a header is a way for
two ends of ours to agree on something per message
while a kiwipy or plumpy peer sees exactly kiwipy's wire. Each extension is negotiated by the message that
carries it: an end that does not send the header gets kiwipy's behaviour, an end that does not read it
(kiwipy, plumpy, an older process_comms) ignores it.

- :data:`NO_PENDING` on a task: the sender does not wait for ``pending`` replies (our flat futures), so the
  worker sends only the final reply. A task without it (kiwipy's clients, our kiwipy-mode facades, which
  nest one future level per ``pending``) gets every ``pending`` reply as before.
- :data:`SUBJECT`, :data:`SENDER` and :data:`SENDER_TYPE` on a broadcast: its subject and sender outside the
  encoded body, so a receiving communicator of ours drops a broadcast that none of its local subscribers
  wants (its own included) without decoding it. The body still carries both, as kiwipy's envelope does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "NO_PENDING",
    "SENDER",
    "SENDER_TYPE",
    "SUBJECT",
    "broadcast_headers",
    "broadcast_unwanted",
    "task_headers",
    "wants_pending",
]

#: Task header: the sender settles on the final reply alone (no ``pending`` replies wanted).
NO_PENDING = "x-pc-no-pending"
#: Broadcast headers: the envelope's subject, and its sender with the sender's type (to rebuild it exactly).
SUBJECT = "x-pc-subject"
SENDER = "x-pc-sender"
SENDER_TYPE = "x-pc-sender-type"

_SENDER_TYPES: dict[str, type] = {"str": str, "int": int, "uuid": uuid.UUID}
_KIND_OF = {cls: name for name, cls in _SENDER_TYPES.items()}
_NO_HEADERS: dict[str, Any] = {}


def task_headers(wants_pending: bool) -> dict[str, Any]:
    """The headers of a task whose sender does (not) wait for ``pending`` replies."""
    return _NO_HEADERS if wants_pending else {NO_PENDING: True}


def wants_pending(headers: Mapping[str, Any] | None) -> bool:
    """Whether the sender of a task with ``headers`` waits for ``pending`` replies (kiwipy's always do)."""
    return not (headers and headers.get(NO_PENDING))


def broadcast_headers(subject: Any, sender: Any) -> dict[str, Any]:
    """The headers that let a receiver filter a broadcast before decoding it; none when a value could not be
    rebuilt exactly from a header (then every receiver decodes it, as kiwipy's do)."""
    if subject is not None and not isinstance(subject, str):
        return _NO_HEADERS
    headers: dict[str, Any] = {}
    if subject is not None:
        headers[SUBJECT] = subject
    if sender is not None:
        kind = _KIND_OF.get(type(sender))
        if kind is None:
            return _NO_HEADERS
        headers[SENDER], headers[SENDER_TYPE] = str(sender), kind
    headers[SENDER_TYPE] = headers.get(SENDER_TYPE, "none")  # marks the extension even for (None, None)
    return headers


def _routing(headers: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    """``(subject, sender)`` from a broadcast's headers, or None if they do not carry them."""
    if not headers:
        return None
    kind = headers.get(SENDER_TYPE)
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind is None:
        return None
    subject = headers.get(SUBJECT)
    if isinstance(subject, bytes):
        subject = subject.decode()
    if kind == "none":
        return subject, None
    cls = _SENDER_TYPES.get(kind)
    raw = headers.get(SENDER)
    if cls is None or raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return subject, cls(text)
    except ValueError:
        return None


def broadcast_unwanted(headers: Mapping[str, Any] | None, subscribers: Iterable[Any]) -> bool:
    """True if the broadcast's headers say that no subscriber in ``subscribers`` wants it.

    A subscriber says what it wants with kiwipy's ``is_filtered(sender, subject)`` (every
    ``kiwipy.BroadcastFilter`` has it), or the one it wraps (``__wrapped__``); one without it wants everything.
    Without our headers: False.
    """
    routing = _routing(headers)
    if routing is None:
        return False
    subject, sender = routing
    for subscriber in subscribers:
        is_filtered = getattr(subscriber, "is_filtered", None)
        if is_filtered is None:  # a wrapper (functools.wraps: a thread facade's) asks what it wraps
            is_filtered = getattr(getattr(subscriber, "__wrapped__", None), "is_filtered", None)
        if not callable(is_filtered) or not is_filtered(sender, subject):
            return False
    return True
