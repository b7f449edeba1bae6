"""Frames a peer got wrong must not cost us the connection: lenient short strings, and a test for them.

pamqp, under aiormq, decodes every AMQP short string (``correlation_id``, ``reply_to``, ``message_id``
and the other basic properties, and header-table keys) as strict UTF-8 (``pamqp.decode.short_str``).
One message whose property holds other bytes makes the frame reader raise ``UnicodeDecodeError``,
aiormq closes the connection, the broker redelivers the message to the next consumer, and the loop
repeats for ever (RELIABILITY.md, tests/transports/test_poison_headers.py). AMQP 0-9-1 says short strings carry UTF-8
(https://www.rabbitmq.com/resources/specs/amqp0-9-1.pdf, 4.2.5.3), and RabbitMQ passes them through
unchecked.

:func:`install` puts a decoder in pamqp's place that, for our own connections only, decodes with
``surrogateescape``: the frame is read, and a property that was not UTF-8 arrives with lone surrogates,
which :func:`malformed_property` finds so that the message is settled as malformed. Valid UTF-8 decodes
exactly as before. Our connections are those opened inside :func:`lenient` (the connection's reader and
reconnection tasks are made there, and a task keeps the context it was made in); every other pamqp user in
the interpreter (kiwipy, pika-free aiormq code) decodes strictly as pamqp does (tests/transports/test_frames.py).
Installing twice is harmless.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Callable, Iterator

import aio_pika.abc
import pamqp.common
import pamqp.decode

__all__ = ["install", "lenient", "malformed_property", "refused"]

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

#: True in the context of our own connections' tasks (:func:`lenient`).
_LENIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("process_comms_lenient_frames", default=False)

#: pamqp's own decoder, used outside our connections.
_STRICT: Callable[[bytes], tuple[int, str]] = pamqp.decode.short_str


def _short_str(value: bytes) -> tuple[int, str]:
    if not _LENIENT.get():
        return _STRICT(value)
    try:
        length = pamqp.common.Struct.byte.unpack(value[0:1])[0]
    except TypeError:
        raise ValueError("Could not unpack short string value") from None
    return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def install() -> None:
    """Put the scoped decoder in pamqp's place (see the module docstring); idempotent."""
    pamqp.decode.short_str = _short_str  # field tables look the function up by this name
    pamqp.decode.METHODS["shortstr"] = _short_str  # basic properties go through this table


@contextlib.contextmanager
def lenient() -> Iterator[None]:
    """Within the block (and in the tasks made in it: a connection's reader), short strings decode leniently."""
    install()
    token = _LENIENT.set(True)
    try:
        yield
    finally:
        _LENIENT.reset(token)


def _short_strings(message: aio_pika.abc.AbstractIncomingMessage) -> tuple[tuple[str, object], ...]:
    """``(name, value)`` of each short-string property of ``message`` (:data:`SHORT_STRING_PROPERTIES`)."""
    return (
        ("content_type", message.content_type),
        ("content_encoding", message.content_encoding),
        ("correlation_id", message.correlation_id),
        ("reply_to", message.reply_to),
        ("expiration", message.expiration),
        ("message_id", message.message_id),
        ("type", message.type),
        ("user_id", message.user_id),
        ("app_id", message.app_id),
    )


def malformed_property(message: aio_pika.abc.AbstractIncomingMessage) -> str | None:
    """The name of the first short-string property of ``message`` that was not UTF-8, or None."""
    for name, value in _short_strings(message):
        if isinstance(value, str) and _SURROGATE.search(value):
            return name
    headers = message.headers or {}
    if any(isinstance(key, str) and _SURROGATE.search(key) for key in headers):
        return "headers"
    return None


def refused(message: aio_pika.abc.AbstractIncomingMessage, kind: str) -> bool:
    """True (and logged at ERROR) if ``message`` has a property that was not UTF-8: settle it as malformed."""
    name = malformed_property(message)
    if name is None:
        return False
    LOGGER.error(
        "refused a malformed %s from exchange %r, routing key %r: its %s is not UTF-8 (AMQP short strings must be)",
        kind,
        message.exchange,
        message.routing_key,
        name,
    )
    return True
