"""Frames a peer got wrong must not cost us the connection: lenient short strings, and a test for them.

pamqp, under aiormq, decodes every AMQP short string (``correlation_id``, ``reply_to``, ``message_id``
and the other basic properties, and header-table keys) as strict UTF-8 (``pamqp.decode.short_str``).
One message whose property holds other bytes makes the frame reader raise ``UnicodeDecodeError``,
aiormq closes the connection, the broker redelivers the message to the next consumer, and the loop
repeats for ever (issue 13, "Poison header"). AMQP 0-9-1 says short strings carry UTF-8
(https://www.rabbitmq.com/resources/specs/amqp0-9-1.pdf, 4.2.5.3), and RabbitMQ passes them through
unchecked.

:func:`install` replaces that decoder with one that decodes with ``surrogateescape``: the frame is read,
and a property that was not UTF-8 arrives with lone surrogates, which :func:`malformed_property` finds so
that the message is settled as malformed. Valid UTF-8 decodes exactly as before. This changes pamqp for
the whole interpreter (other pamqp users, e.g. kiwipy, get a connection that survives too); installing
twice is harmless.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pamqp.common
import pamqp.decode

__all__ = ["install", "malformed_property", "refused"]

LOGGER = logging.getLogger(__name__)

#: Basic properties that are AMQP short strings (AMQP 0-9-1, section 1.8.3.x "basic" class properties).
SHORT_STRING_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
)

_SURROGATE = re.compile("[\udc80-\udcff]")


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = pamqp.common.Struct.byte.unpack(value[0:1])[0]
    except TypeError:
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def install() -> None:
    """Make pamqp decode short strings leniently (see the module docstring); idempotent."""
    pamqp.decode.short_str = _short_str  # field tables look the function up by this name
    pamqp.decode.METHODS["shortstr"] = _short_str  # basic properties go through this table


def malformed_property(message: Any) -> str | None:
    """The name of the first short-string property of ``message`` that was not UTF-8, or None."""
    for name in SHORT_STRING_PROPERTIES:
        value = getattr(message, name, None)
        if isinstance(value, str) and _SURROGATE.search(value):
            return name
    headers = getattr(message, "headers", None) or {}
    if any(isinstance(key, str) and _SURROGATE.search(key) for key in headers):
        return "headers"
    return None


def refused(message: Any, kind: str) -> bool:
    """True (and logged at ERROR) if ``message`` has a property that was not UTF-8: settle it as malformed."""
    name = malformed_property(message)
    if name is None:
        return False
    LOGGER.error(
        "refused a malformed %s from exchange %r, routing key %r: its %s is not UTF-8 (AMQP short strings must be)",
        kind,
        getattr(message, "exchange", None),
        getattr(message, "routing_key", None),
        name,
    )
    return True
