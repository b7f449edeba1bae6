"""Task queue depth and consumers, as ``process-comms queue`` asks for them: one passive ``queue.declare``.

pika, not the library's aio-pika transport: the library has no call that inspects a queue (see
``process_comms/cli/queue.py``, which this follows). The blocking connection runs on a worker thread
with every socket wait bounded, so the page's loop never waits on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pika
import pika.exceptions

from ..errors import AccessRefused, BrokerUnavailable
from ..errors import TimeoutError as PCTimeoutError
from ..urls import mask_url

__all__ = ["NO_WORKERS_API", "inspect_queue"]

#: Why the workers panel has no rows: the client has no call that lists workers (their host, slots, health).
NO_WORKERS_API = (
    "not available: the client has no API that lists workers yet (host, queues, slots, health); "
    "the task queue's consumer count is the number of workers taking tasks"
)


def _parameters(url: str, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    return params


def _declare(urls: list[str], name: str, timeout: float) -> dict[str, Any]:
    """The passive declare, on the first broker address that answers."""
    failure = ""
    for url in urls:
        try:
            connection = pika.BlockingConnection(_parameters(url, timeout))
        except pika.exceptions.ProbableAuthenticationError:
            failure = f"the broker at {mask_url(url)} refused the credentials"
            continue
        except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
            failure = f"could not connect to {mask_url(url)}: {type(exc).__name__}"
            continue
        try:
            channel = connection.channel()
            declared = channel.queue_declare(queue=name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return {"queue": name, "exists": False, "messages": 0, "consumers": 0}
            raise AccessRefused(f"the broker refused to inspect {name!r}: {exc.reply_text}") from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"lost the broker while inspecting {name!r}: {type(exc).__name__}") from None
        finally:
            try:
                if connection.is_open:
                    connection.close()
            except pika.exceptions.AMQPError:
                pass
        return {
            "queue": name,
            "exists": True,
            "messages": int(declared.method.message_count),
            "consumers": int(declared.method.consumer_count),
        }
    raise BrokerUnavailable(failure or "no broker address to inspect the task queue at")


async def inspect_queue(urls: list[str], name: str, timeout: float) -> dict[str, Any]:
    """``{"queue", "exists", "messages", "consumers"}`` of task queue ``name``, within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_declare, urls, name, timeout), timeout + 1.0)
    except asyncio.TimeoutError:
        raise PCTimeoutError(f"inspecting the task queue {name!r} took longer than {timeout:g} s") from None
