"""How many tasks wait in a task queue and how many consumers take them: one passive ``queue.declare``.

The one home of that question, for ``process-comms queue`` and the dashboard. pika, not the aio-pika
transport: a blocking connection of its own (one attempt, every socket wait bounded) asks once and
closes, without declaring exchanges or reply queues as a communicator would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pika
import pika.exceptions

from ...errors import AccessRefused, BrokerUnavailable
from ...errors import TimeoutError as PCTimeoutError
from ...urls import mask_url, split_urls

__all__ = ["inspect_task_queue", "inspect_task_queue_async"]


def _parameters(url: str, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    return params


def inspect_task_queue(url: str | Sequence[str], name: str, timeout: float) -> dict[str, object]:
    """``{"queue", "exists", "messages", "consumers"}`` of queue ``name`` on the first broker that answers.

    Raises :class:`BrokerUnavailable` if none answers (or all refuse the credentials) and
    :class:`AccessRefused` if the broker refuses to show the queue.
    """
    urls = split_urls(url)
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


async def inspect_task_queue_async(url: str | Sequence[str], name: str, timeout: float) -> dict[str, object]:
    """``{"queue", "exists", "messages", "consumers"}`` of task queue ``name``, within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(inspect_task_queue, url, name, timeout), timeout + 1.0)
    except asyncio.TimeoutError:
        raise PCTimeoutError(f"inspecting the task queue {name!r} took longer than {timeout:g} s") from None
