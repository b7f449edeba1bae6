"""What the RabbitMQ back end declares: every exchange and queue, with its flags and arguments, in one place.

The names and arguments are kiwipy 0.9's, so that plumpy/kiwipy peers share the entities (kiwipy declares
them in https://github.com/aiidateam/kiwipy/blob/master/src/kiwipy/rmq/communicator.py and
https://github.com/aiidateam/kiwipy/blob/master/src/kiwipy/rmq/tasks.py). Nothing here does I/O: the
communicator passes these specifications to aio-pika.

Two rules for RabbitMQ 3.10 through 4.x (https://www.rabbitmq.com/docs/deprecated-features):

* every queue names its type (``x-queue-type``): on a vhost whose default queue type is quorum, a durable
  queue declared without it silently becomes a quorum queue. ``classic`` is equivalent to kiwipy's
  declaration without the argument, both ways, so kiwipy peers share the queue unchanged;
* no transient non-exclusive queue (refused by default from RabbitMQ 4.3,
  https://github.com/aiidateam/aiida-core/issues/7375): the testing
  mode's task queue is durable and expires when unused, instead of kiwipy's transient one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import aio_pika

from ... import defaults

__all__ = [
    "QUEUE_TYPES",
    "QueueType",
    "ExchangeSpec",
    "QueueSpec",
    "broadcast_queue",
    "exchange",
    "reply_queue",
    "rpc_queue",
    "task_queue",
]


QueueType = Literal["classic", "quorum"]
#: The task queue types: ``classic`` (kiwipy's; the default) or ``quorum`` (replicated, for a cluster).
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum")

#: A quorum queue drops (or dead-letters) a message redelivered this often; RabbitMQ 4.0+ defaults to 20
#: (https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling). A long process whose worker dies
#: again and again must not be dropped: the limit is set high, explicitly, on every version.
QUORUM_DELIVERY_LIMIT = 1_000_000


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
        arguments={"x-queue-type": "classic", "x-expires": defaults.REPLY_QUEUE_EXPIRES_MS},
    )


def rpc_queue(*, testing_mode: bool) -> QueueSpec:
    """The one exclusive queue that all RPC routes (``[rpc].<pid>`` bindings) of a communicator share."""
    return QueueSpec(
        f"amq_{uuid.uuid4().hex}",
        exclusive=True,
        auto_delete=testing_mode,
        arguments={
            "x-queue-type": "classic",
            "x-message-ttl": defaults.RPC_QUEUE_MESSAGE_TTL_MS,
            "x-expires": defaults.RPC_QUEUE_EXPIRES_MS,
        },
    )


def broadcast_queue(*, testing_mode: bool) -> QueueSpec:
    """A subscriber's exclusive broadcast queue, bound to ``[broadcast]``."""
    return QueueSpec(
        f"broadcast-{uuid.uuid4().hex[:22]}",
        exclusive=True,
        auto_delete=testing_mode,
        arguments={"x-queue-type": "classic", "x-message-ttl": defaults.BROADCAST_QUEUE_MESSAGE_TTL_MS},
    )


def task_queue(name: str, *, testing_mode: bool, queue_type: QueueType = "classic") -> QueueSpec:
    """A shared task queue: durable, messages kept 7 days; in testing mode it expires 10 s after its last use.

    ``quorum``: replicated over a cluster's nodes, with :data:`QUORUM_DELIVERY_LIMIT`. A quorum queue also
    applies the broker's ``consumer_timeout`` (30 min by default) to a task held unacknowledged, as a
    persisted ``nowait`` launch is for its process's life: docs/fleet.md says how to set it.
    """
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"task_queue_type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    arguments: dict[str, Any] = {"x-queue-type": queue_type, "x-message-ttl": defaults.TASK_MESSAGE_TTL_MS}
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    if testing_mode:
        arguments["x-expires"] = defaults.TESTING_TASK_QUEUE_EXPIRES_MS
    return QueueSpec(name, durable=True, arguments=arguments)
