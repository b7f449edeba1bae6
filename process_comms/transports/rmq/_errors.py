"""What the AMQP libraries raise, grouped, and the broker's own words for a refusal: one home for both."""

from __future__ import annotations

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.commands

from ...errors import AccessRefused
from ...urls import mask_url

__all__ = ["CONNECTION_ERRORS", "SETTLE_ERRORS", "access_refused", "describe_connect_error"]

#: What a lost or closing connection or channel raises from aio-pika/aiormq.
CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
    ConnectionError,
    RuntimeError,
)
SETTLE_ERRORS = (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError)

#: The frames a broker closes a connection or channel with; an aiormq error carries one as its first argument.
_CLOSE_FRAMES = (pamqp.commands.Connection.Close, pamqp.commands.Channel.Close)


def describe_connect_error(exc: BaseException) -> str:
    """The broker's own words for a refused connection (e.g. ``530 NOT_ALLOWED - access to vhost '/'``)."""
    for arg in exc.args:
        if isinstance(arg, _CLOSE_FRAMES) and arg.reply_code is not None:
            return f"the broker refused the connection: {arg.reply_code} {arg.reply_text}"
    return f"{type(exc).__name__}: {exc}"


def access_refused(exc: aiormq.exceptions.ChannelAccessRefused, url: str) -> AccessRefused:
    """Our error for a ``403 ACCESS_REFUSED``, in the broker's words (they name the user and the resource)."""
    frame = exc.args[0] if exc.args else None
    text = (frame.reply_text if isinstance(frame, _CLOSE_FRAMES) else None) or str(exc)
    return AccessRefused(f"the broker at {mask_url(url)} refused: {text}")
