"""What one message may cost to decode is bounded (issue 13, "Decoding cost is not bounded").

Before, an 8 MiB block-YAML list (under the 8 MiB limit) held a worker's loop for 10-20 s and grew it by
hundreds of MB, so other calls to the same worker timed out. Now block YAML over 1 MiB is refused at
once, and a large body is decoded off the I/O loop, so the loop keeps answering meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

import process_comms
from process_comms.wire.codec import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_YAML_BYTES, YamlCodec
from tests.conftest import BROKER_URL

T = 30.0


def block_yaml_list(size: int) -> bytes:
    """A flat block-YAML list of about ``size`` bytes (what a kiwipy peer's dumper writes)."""
    count = size // 9
    return "".join(f"- {i:06d}\n" for i in range(count)).encode()


def test_block_yaml_over_the_yaml_limit_is_refused_without_decoding_it() -> None:
    body = block_yaml_list(DEFAULT_MAX_MESSAGE_BYTES - 64)
    started = time.process_time()
    with pytest.raises(process_comms.DecodeError, match="block YAML"):
        YamlCodec().decode(body)
    assert time.process_time() - started < 1.0  # refused by size, not after 10-20 s of parsing


def test_large_flow_documents_still_decode_up_to_the_message_limit() -> None:
    body = json.dumps(list(range(900_000))).encode()  # our own encoding: flow YAML that is also JSON
    assert DEFAULT_MAX_YAML_BYTES < len(body) < DEFAULT_MAX_MESSAGE_BYTES
    assert YamlCodec().decode(body)[-1] == 899_999


@pytest.fixture
def raw(broker_url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        yield connection.channel()
    finally:
        connection.close()


def test_a_large_message_does_not_hold_the_loop_from_other_calls(names: dict[str, str], raw: Any) -> None:
    order: list[str] = []
    both = threading.Event()

    def record(name: str) -> Any:
        def subscriber(_comm: Any, _msg: Any) -> str:
            order.append(name)
            if len(order) == 2:
                both.set()
            return name

        return subscriber

    with (
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as worker,
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as client,
    ):
        worker.add_rpc_subscriber(record("big"), "big")
        worker.add_rpc_subscriber(record("small"), "small")
        big = block_yaml_list(DEFAULT_MAX_YAML_BYTES - 64)  # the largest block YAML still decoded: ~1-2 s
        raw.basic_publish(names["message_exchange"], "[rpc].big", big, pika.BasicProperties(correlation_id="big"))
        assert client.rpc_send("small", {"intent": "status"}).result(T) == "small"
        assert both.wait(T)
    assert order == ["small", "big"]  # the small call was answered while the big one was being decoded


def test_an_oversized_block_yaml_rpc_gets_one_error_reply_and_the_worker_goes_on(
    names: dict[str, str], raw: Any
) -> None:
    with (
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as worker,
        process_comms.connect(BROKER_URL, testing_mode=True, **names) as client,
    ):
        worker.add_rpc_subscriber(lambda _c, msg: msg, "target")
        replies = raw.queue_declare("", exclusive=True).method.queue
        raw.queue_bind(replies, names["message_exchange"], replies)  # replies travel on the message exchange
        body = block_yaml_list(DEFAULT_MAX_MESSAGE_BYTES - 64)
        raw.basic_publish(
            names["message_exchange"], "[rpc].target", body, pika.BasicProperties(correlation_id="c", reply_to=replies)
        )
        deadline = time.monotonic() + T
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            method, _props, reply = raw.basic_get(replies, auto_ack=True)
            if method is None:
                raw.connection.sleep(0.05)
            else:
                got.append(reply)
        assert got and b"block YAML" in got[0]
        assert client.rpc_send("target", "still here").result(T) == "still here"
