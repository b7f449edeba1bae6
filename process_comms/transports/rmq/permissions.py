"""Least-privilege RabbitMQ users for one installation: a worker user and a client user
(docs/security.md, tests/transports/test_least_privilege.py).

With full vhost permissions any user of the vhost can read every request and task, forge replies,
answer for pids nobody holds, take tasks and delete the task queue. RabbitMQ's permissions
(configure / write / read regular expressions on resource names) and topic permissions (write / read
regular expressions on the routing keys of a topic exchange: publish and bind) close all of that
(https://www.rabbitmq.com/docs/access-control). What each user may do here:

* the **worker** user declares the exchanges and the task queue, consumes tasks, holds RPC routes
  (``[rpc].<pid>``), broadcasts and replies;
* the **client** user declares only its own exclusive reply, RPC and broadcast queues (the exchanges and
  the task queue it uses as they are, passively), publishes tasks with the task queue's routing key and
  requests on ``[rpc].*`` and ``[broadcast]``, and binds only its reply queues and ``[broadcast]``. So it
  cannot publish a reply to another client, bind ``[rpc].*`` to answer for a pid or read requests, take
  tasks, or delete anything;
* any **other** user, without permissions on these names, cannot observe, forge, consume or delete.

The queues every communicator declares for itself (``amq_<hex>`` RPC queues, ``broadcast-<hex>``,
``<exchange>-reply-<uuid>``) are exclusive: no other connection may consume, bind or delete them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from ... import defaults

__all__ = ["UserPermissions", "least_privilege", "rabbitmqctl_lines"]


@dataclass(frozen=True)
class UserPermissions:
    """``rabbitmqctl set_permissions`` and ``set_topic_permissions`` arguments for one user."""

    user: str
    configure: str
    write: str
    read: str
    #: ``(exchange, write, read)`` routing-key patterns per topic exchange.
    topics: tuple[tuple[str, str, str], ...]

    def commands(self, vhost: str = "/") -> list[list[str]]:
        """The ``rabbitmqctl`` argument lists that grant these permissions on ``vhost``."""
        lines = [["set_permissions", "-p", vhost, self.user, self.configure, self.write, self.read]]
        lines += [["set_topic_permissions", "-p", vhost, self.user, ex, write, read] for ex, write, read in self.topics]
        return lines


def _alt(*names: str) -> str:
    return "|".join(names)


def least_privilege(
    worker_user: str,
    client_user: str,
    *,
    message_exchange: str = defaults.MESSAGE_EXCHANGE,
    task_exchange: str = defaults.TASK_EXCHANGE,
    task_queue: str | None = None,
) -> tuple[UserPermissions, UserPermissions]:
    """The worker's and the client's permissions for the installation with these exchange and queue names."""
    msg, tasks = re.escape(message_exchange), re.escape(task_exchange)
    # the default task queue and the named ones (``<task queue>.<name>``, rmq/_tasks.py)
    queue = re.escape(task_queue if task_queue is not None else task_exchange) + r"(\..+)?"
    own_queues = _alt(r"amq_[0-9a-f]+", r"broadcast-[0-9a-f]+", rf"{msg}-reply-.+", rf"{tasks}-reply-.+")
    rpc, broadcast = re.escape(defaults.RPC_PREFIX) + r"\..+", re.escape(defaults.BROADCAST_KEY)
    worker = UserPermissions(
        worker_user,
        configure=f"^({_alt(msg, tasks, queue, own_queues)})$",
        write=f"^({_alt(msg, tasks, queue, own_queues)})$",
        read=f"^({_alt(msg, tasks, queue, own_queues)})$",
        topics=((message_exchange, ".*", ".*"), (task_exchange, ".*", ".*")),
    )
    client = UserPermissions(
        client_user,
        configure=f"^({own_queues})$",
        write=f"^({_alt(msg, tasks, own_queues)})$",
        read=f"^({_alt(msg, tasks, own_queues)})$",
        topics=(
            # publish requests and broadcasts, never replies; bind its reply queue and [broadcast] only
            (message_exchange, f"^({_alt(rpc, broadcast)})$", f"^({_alt(rf'{msg}-reply-.+', broadcast)})$"),
            (task_exchange, f"^{queue}$", rf"^{tasks}-reply-.+$"),
        ),
    )
    return worker, client


def rabbitmqctl_lines(
    worker_user: str,
    client_user: str,
    *,
    vhost: str = "/",
    message_exchange: str = defaults.MESSAGE_EXCHANGE,
    task_exchange: str = defaults.TASK_EXCHANGE,
    task_queue: str | None = None,
) -> list[str]:
    """Shell lines (``rabbitmqctl ...``, quoted) that grant both users their permissions on ``vhost``."""
    users = least_privilege(
        worker_user, client_user, message_exchange=message_exchange, task_exchange=task_exchange, task_queue=task_queue
    )
    return [shlex.join(["rabbitmqctl", *args]) for user in users for args in user.commands(vhost)]
