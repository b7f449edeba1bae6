"""What the RabbitMQ back end declares: every exchange and queue, with its flags and arguments, in one place.

The names and arguments are kiwipy 0.9's, so that plumpy/kiwipy peers share the entities (the table in
``shared/rabbitmq-and-aiida-facts.md`` section 3.1 lists kiwipy's declarations with their sources; the
wire format is in ``shared/wire-protocol.md``). Nothing here does I/O: the communicator passes these
specifications to aio-pika.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika

from ... import defaults

__all__ = [
    "ExchangeSpec",
    "QueueSpec",
    "broadcast_queue",
    "exchange",
    "reply_queue",
    "rpc_queue",
    "task_queue",
]


@dataclass(frozen=True)
class ExchangeSpec:
    """A topic exchange: non-durable as kiwipy declares them; auto-delete only in testing mode."""

    name: str
    auto_delete: bool

    def declare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``channel.declare_exchange``."""
        return {
            "name": self.name,
            "type": aio_pika.ExchangeType.TOPIC,
            "durable": False,
            "auto_delete": self.auto_delete,
        }


@dataclass(frozen=True)
class QueueSpec:
    """A queue declaration: its name, flags and ``x-`` arguments."""

    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    def declare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``channel.declare_queue``."""
        return {
            "name": self.name,
            "durable": self.durable,
            "exclusive": self.exclusive,
            "auto_delete": self.auto_delete,
            "arguments": dict(self.arguments),
        }


def exchange(name: str, *, testing_mode: bool) -> ExchangeSpec:
    """The message or task exchange."""
    return ExchangeSpec(name, auto_delete=testing_mode)


def reply_queue(exchange_name: str, *, testing_mode: bool) -> QueueSpec:
    """A communicator's reply queue for RPCs or tasks: exclusive, expiring 60 s after its last consumer."""
    return QueueSpec(
        f"{exchange_name}-reply-{uuid.uuid4()}",
        exclusive=True,
        auto_delete=testing_mode,
        arguments={"x-expires": defaults.REPLY_QUEUE_EXPIRES_MS},
    )


def rpc_queue(*, testing_mode: bool) -> QueueSpec:
    """The one exclusive queue that all RPC routes (``[rpc].<pid>`` bindings) of a communicator share."""
    return QueueSpec(
        f"amq_{uuid.uuid4().hex}",
        exclusive=True,
        auto_delete=testing_mode,
        arguments={"x-message-ttl": defaults.RPC_QUEUE_MESSAGE_TTL_MS, "x-expires": defaults.RPC_QUEUE_EXPIRES_MS},
    )


def broadcast_queue(*, testing_mode: bool) -> QueueSpec:
    """A subscriber's exclusive broadcast queue, bound to ``[broadcast]``."""
    return QueueSpec(
        f"broadcast-{uuid.uuid4().hex[:22]}",
        exclusive=True,
        auto_delete=testing_mode,
        arguments={"x-message-ttl": defaults.BROADCAST_QUEUE_MESSAGE_TTL_MS},
    )


def task_queue(name: str, *, testing_mode: bool) -> QueueSpec:
    """The shared task queue: durable, messages kept 7 days; in testing mode it expires 10 s after its last use."""
    arguments: dict[str, Any] = {"x-message-ttl": defaults.TASK_MESSAGE_TTL_MS}
    if testing_mode:
        arguments["x-expires"] = defaults.TESTING_TASK_QUEUE_EXPIRES_MS
    return QueueSpec(name, durable=not testing_mode, arguments=arguments)
