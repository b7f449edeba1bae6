"""The least-privilege setup of process_comms.transports.rmq.permissions, on the real broker (issue 13).

Three users made with rabbitmqctl: a worker user and a client user with the permissions the module
prints, and another user of the same vhost with permissions on its own names only. The library works
under the first two; the client cannot answer for a pid, forge a reply, take tasks or delete the task
queue; the other user cannot observe, forge, consume or delete anything of the installation.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

import process_comms
from process_comms.transports.rmq.permissions import least_privilege, rabbitmqctl_lines
from tests.conftest import BROKER_URL, broker_url_as, rabbitmqctl

pytestmark = pytest.mark.broker

T = 20.0


class Users:
    def __init__(self, names: dict[str, str]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.names = names
        self.password = secrets.token_hex(8)
        self.worker, self.client, self.other = f"pc-worker-{tag}", f"pc-client-{tag}", f"pc-other-{tag}"

    def url(self, user: str) -> str:
        return broker_url_as(user, self.password)


@pytest.fixture
def users(names: dict[str, str], broker_url: str) -> Iterator[Users]:
    made = Users(names)
    for user in (made.worker, made.client, made.other):
        rabbitmqctl("add_user", user, made.password)
    try:
        worker, client = least_privilege(made.worker, made.client, **names)
        for perms in (worker, client):
            for args in perms.commands("/"):
                rabbitmqctl(*args)
        rabbitmqctl("set_permissions", "-p", "/", made.other, "^other\\.", "^other\\.", "^other\\.")
        yield made
    finally:
        for user in (made.worker, made.client, made.other):
            rabbitmqctl("delete_user", user)
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            channel = connection.channel()
            channel.queue_delete(names["task_queue"])
            channel.exchange_delete(names["message_exchange"])
            channel.exchange_delete(names["task_exchange"])
        finally:
            connection.close()


def refused(url: str, action: Callable[[Any], Any]) -> int:
    """Run ``action(channel)`` as a raw pika peer; the broker's reply code (403: refused), or 0 if it was allowed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        action(connection.channel())
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def test_the_printed_lines_are_the_commands_the_test_runs() -> None:
    lines = rabbitmqctl_lines("w", "c", message_exchange="p.messages", task_exchange="p.tasks", task_queue="p.q")
    assert lines[0].startswith("rabbitmqctl set_permissions -p / w ")
    assert sum("set_topic_permissions" in line for line in lines) == 4


def test_the_library_works_under_the_least_privilege_users(users: Users) -> None:
    names = users.names
    with process_comms.connect(users.url(users.worker), **names) as worker:
        worker.add_task_subscriber(lambda _c, task: {"echo": task})
        worker.add_rpc_subscriber(lambda _c, msg: {"pong": msg}, "p1")
        got: list[Any] = []
        worker.add_broadcast_subscriber(lambda _c, body, *_: got.append(body))
        with process_comms.connect(users.url(users.client), **names) as client:
            assert client.task_send("t").result(T) == {"echo": "t"}
            assert client.rpc_send("p1", 1).result(T) == {"pong": 1}
            assert client.broadcast_send("hello").result(T) is True
            with pytest.raises(process_comms.AccessRefused, match=users.client):
                client.add_task_subscriber(lambda _c, task: task)  # may not take tasks


def test_the_client_cannot_answer_forge_take_or_delete(users: Users) -> None:
    names = users.names
    msg, queue = names["message_exchange"], names["task_queue"]
    with process_comms.connect(users.url(users.worker), **names) as worker:
        worker.add_task_subscriber(lambda _c, task: task)
        url = users.url(users.client)

        def bind_rpc(ch: Any) -> None:
            own = ch.queue_declare(f"amq_{uuid.uuid4().hex}", exclusive=True).method.queue
            ch.queue_bind(own, msg, "[rpc].p1")  # to answer for a pid

        def forge_reply(ch: Any) -> None:
            ch.confirm_delivery()
            ch.basic_publish(msg, f"{msg}-reply-{uuid.uuid4()}", b"{result: forged}")

        assert refused(url, bind_rpc) == 403
        assert refused(url, forge_reply) == 403
        assert refused(url, lambda ch: ch.basic_get(queue)) == 403
        assert refused(url, lambda ch: ch.queue_delete(queue)) == 403
        assert refused(url, lambda ch: ch.exchange_delete(msg)) == 403


def test_another_user_cannot_observe_forge_consume_or_delete(users: Users) -> None:
    names = users.names
    msg, tasks, queue = names["message_exchange"], names["task_exchange"], names["task_queue"]
    with process_comms.connect(users.url(users.worker), **names) as worker:
        worker.add_task_subscriber(lambda _c, task: task)
        url = users.url(users.other)

        def observe(ch: Any) -> None:
            own = ch.queue_declare("other.spy", exclusive=True).method.queue
            ch.queue_bind(own, msg, "#")

        def forge(ch: Any) -> None:
            ch.confirm_delivery()
            ch.basic_publish(msg, "[rpc].p1", b"{intent: kill}")

        assert refused(url, observe) == 403
        assert refused(url, forge) == 403
        assert refused(url, lambda ch: ch.basic_publish(tasks, queue, b"x") or ch.confirm_delivery()) == 403
        assert refused(url, lambda ch: ch.basic_get(queue)) == 403
        assert refused(url, lambda ch: ch.queue_delete(queue)) == 403
        with process_comms.connect(url, **names) as intruder:  # the library says what was refused, and to whom
            with pytest.raises(process_comms.AccessRefused, match=users.other):
                intruder.task_send("x").result(T)


def _answer_one_rpc(users: Users, route: str, replies: list[tuple[str, bytes]]) -> None:
    """Act as a worker with raw pika: take one request on ``route``, then send ``replies`` as (user, body)."""
    names = users.names
    as_worker = pika.BlockingConnection(pika.URLParameters(users.url(users.worker)))
    forger = pika.BlockingConnection(pika.URLParameters(BROKER_URL))  # full permissions
    try:
        channel = as_worker.channel()
        queue = channel.queue_declare(f"amq_{uuid.uuid4().hex}", exclusive=True).method.queue
        channel.queue_bind(queue, names["message_exchange"], f"[rpc].{route}")
        yield_request = channel.consume(queue, auto_ack=True, inactivity_timeout=T)
        ready.set()
        method, props, _body = next(yield_request)
        assert method is not None, "no request arrived"
        for user, body in replies:
            sender = (forger if user == "guest" else as_worker).channel()
            sender.basic_publish(
                names["message_exchange"],
                props.reply_to,
                body,
                pika.BasicProperties(correlation_id=props.correlation_id, user_id=user),
            )
        channel.cancel()
    finally:
        as_worker.close()
        forger.close()


ready = threading.Event()


@pytest.mark.parametrize("trusted", [True, False])
def test_a_forged_reply_is_dropped_when_replies_must_come_from_the_worker_user(users: Users, trusted: bool) -> None:
    """RabbitMQ validates ``user_id`` against the publishing connection's user, so it cannot be forged."""
    options: dict[str, Any] = {**users.names}
    if trusted:
        options["trusted_reply_users"] = {users.worker}
    ready.clear()
    replies = [("guest", b"{result: forged}"), (users.worker, b"{result: genuine}")]
    peer = threading.Thread(target=_answer_one_rpc, args=(users, "p9", replies), daemon=True)
    peer.start()
    with process_comms.connect(users.url(users.worker), **users.names):  # declares the exchanges
        assert ready.wait(T)
        with process_comms.connect(users.url(users.client), **options) as client:
            answer = client.rpc_send("p9", "hi").result(T)
    peer.join(T)
    assert answer == ("genuine" if trusted else "forged")  # without the check the first reply wins


def test_our_workers_sign_their_replies_with_their_broker_user(users: Users) -> None:
    names = users.names
    with process_comms.connect(users.url(users.worker), **names) as worker:
        worker.add_rpc_subscriber(lambda _c, msg: msg, "p2")
        options = {**names, "trusted_reply_users": {users.worker}}
        with process_comms.connect(users.url(users.client), **options) as client:
            assert client.rpc_send("p2", "signed").result(T) == "signed"
