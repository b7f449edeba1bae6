"""One message whose AMQP short-string properties are not UTF-8 stops nothing (issue 13, "Poison header").

pamqp decodes short strings (``correlation_id``, ``reply_to``, ``message_id``, ...) as strict UTF-8; such
a frame made aiormq drop the whole connection, the broker redelivered the message and the worker looped
(47 reconnects in 15 s seen). Sent here by a raw pika peer, which passes bytes through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pika
import pytest

import process_comms
from tests.conftest import BROKER_URL
from tests.waiting import wait_until

T = 20.0
BAD = b"\xff\xfe-not-utf8"


@pytest.fixture
def raw(broker_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


def _attempts(comm: process_comms.ThreadCommunicator) -> int:
    """How many times the communicator's robust connection has connected (1: never reconnected)."""
    return int(comm.core.connection.robust.connection_attempt)  # type: ignore[attr-defined]


def _ready(raw: Any, queue: str) -> int:
    return int(raw.queue_declare(queue, passive=True).method.message_count)


@pytest.mark.parametrize("prop", ["correlation_id", "reply_to", "message_id", "type", "app_id"])
def test_a_task_with_a_non_utf8_property_is_settled_once_and_the_worker_goes_on(
    names: dict[str, str], raw: Any, prop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="process_comms")
    with (
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as worker,
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as client,
    ):
        seen: list[Any] = []
        worker.add_task_subscriber(lambda _c, task: seen.append(task) or task)
        assert client.task_send("before").result(T) == "before"
        props = {"correlation_id": "c", "reply_to": "nowhere", prop: BAD}
        raw.basic_publish(
            names["task_exchange"], names["task_queue"], b"[poison, false]", pika.BasicProperties(**props)
        )
        wait_until(lambda: any("malformed" in r.message for r in caplog.records), T, "the malformed message logged")
        assert client.task_send("after").result(T) == "after"
        assert _attempts(worker) == 1 and _attempts(client) == 1  # no connection was dropped
        assert "poison" not in seen  # never handed to a subscriber
        assert _ready(raw, names["task_queue"]) == 0  # settled, not requeued


def test_an_rpc_with_a_non_utf8_correlation_id_is_dropped_and_the_worker_answers_others(
    names: dict[str, str], raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="process_comms")
    with (
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as worker,
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as client,
    ):
        worker.add_rpc_subscriber(lambda _c, msg: msg, "target")
        raw.basic_publish(
            names["message_exchange"],
            "[rpc].target",
            b"{intent: status}",
            pika.BasicProperties(correlation_id=BAD, reply_to="amq.gen-nowhere"),
        )
        wait_until(lambda: any("malformed" in r.message for r in caplog.records), T, "the malformed RPC logged")
        assert client.rpc_send("target", "ok").result(T) == "ok"
        assert _attempts(worker) == 1


def test_a_reply_with_a_non_utf8_correlation_id_does_not_break_the_caller(
    names: dict[str, str], raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="process_comms")
    with (
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as worker,
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as client,
    ):
        worker.add_rpc_subscriber(lambda _c, msg: msg, "target")
        assert client.rpc_send("target", 1).result(T) == 1
        reply_queue = client.core.requests.reply_queues["rpc"]  # type: ignore[attr-defined]
        raw.basic_publish("", reply_queue, b"{result: forged}", pika.BasicProperties(correlation_id=BAD))
        wait_until(lambda: any("malformed" in r.message for r in caplog.records), T, "the malformed reply logged")
        assert client.rpc_send("target", 2).result(T) == 2  # the caller's connection survived
        assert _attempts(client) == 1
