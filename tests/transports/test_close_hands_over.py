"""Nothing handed over is lost at close or exit (issue 13, "Lost before it starts").

A fire-and-forget send (``no_reply=True``), a launch or continue without a reply, and an RPC sent just
before ``close()`` must reach the broker, confirmed, before the connection goes; the same when a script
ends without closing. Counted on the real broker with a raw pika peer (passive declare: message count).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pika
import pytest

import process_comms
from process_comms import RemoteProcessThreadController
from tests.conftest import BROKER_URL, delete_broker_objects

T = 30.0
N = 5


@pytest.fixture
def durable_names(names: dict[str, str], broker_url: str) -> Iterator[dict[str, str]]:
    """Unique names outside testing mode (a durable task queue we can count), removed afterwards."""
    yield names
    delete_broker_objects(names["message_exchange"].rsplit(".", 1)[0])


def queued(queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare; 0 if the queue was never declared)."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["task_send", "launch", "continue"])
def test_fire_and_forget_then_close_delivers_every_message(durable_names: dict[str, str], how: str) -> None:
    comm = process_comms.connect(BROKER_URL, **durable_names)
    controller = RemoteProcessThreadController(comm)
    send = {
        "task_send": lambda i: comm.task_send({"n": i}, no_reply=True),
        "launch": lambda i: controller.launch_process("tests.procs:Sleep", nowait=True, no_reply=True),
        "continue": lambda i: controller.continue_process(f"pid-{i}", nowait=False, no_reply=True),
    }[how]
    futures = [send(i) for i in range(N)]
    comm.close()  # at once: nothing waited for the futures
    assert queued(durable_names["task_queue"]) == N
    for fut in futures:
        assert fut.result(T) is None  # resolved once the broker confirmed it, not failed by the close


def test_a_script_that_exits_without_closing_delivers_its_sends(durable_names: dict[str, str]) -> None:
    script = textwrap.dedent(
        f"""
        import process_comms
        comm = process_comms.connect({BROKER_URL!r}, **{durable_names!r})
        controller = process_comms.RemoteProcessThreadController(comm)
        for i in range({N}):
            controller.continue_process(f"pid-{{i}}", no_reply=True)  # what AiiDA's submit() does
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=T)
    assert done.returncode == 0, done.stderr
    assert queued(durable_names["task_queue"]) == N


def test_an_rpc_sent_just_before_close_reaches_its_subscriber(durable_names: dict[str, str]) -> None:
    received: list[Any] = []
    arrived = threading.Event()

    def subscriber(_comm: Any, msg: Any) -> str:
        received.append(msg)
        if len(received) == N:
            arrived.set()
        return "ok"

    with process_comms.connect(BROKER_URL, **durable_names) as server:
        server.add_rpc_subscriber(subscriber, "target")
        client = process_comms.connect(BROKER_URL, **durable_names)
        client.add_rpc_subscriber(lambda _c, _m: None, "the-client-also-subscribes")
        futures = [client.rpc_send("target", {"n": i}) for i in range(N)]
        client.close()
        assert arrived.wait(T), f"{len(received)} of {N} RPCs arrived"
    for fut in futures:  # a reply that beat the close is the result; a later one fails the call, typed
        try:
            assert fut.result(T) == "ok"
        except process_comms.CommunicatorClosed:
            pass


def test_a_send_after_close_is_refused_not_lost(durable_names: dict[str, str]) -> None:
    comm = process_comms.connect(BROKER_URL, **durable_names)
    comm.close()
    with pytest.raises(process_comms.CommunicatorClosed):
        comm.task_send({"n": 1}, no_reply=True).result(T)
