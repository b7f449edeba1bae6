"""The fast channel's writes (rmq/_connection.py): pamqp's bytes, in the order they were made, typed errors as before.

Unconfirmed, non-mandatory publishes (replies, broadcasts) are marshalled in one pass and put on the
connection's write queue without aiormq's lock and drain wait; a route's nowait bind goes the same way and
its unbind shares round trips with the others in flight. What a peer and a caller see must not change.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import pamqp.commands
import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from process_comms import ConnectionLost, ProcessUnreachable
from process_comms.transports.rmq import RmqCommunicator
from process_comms.transports.rmq._connection import bind_nowait, marshal_publish
from tests.conftest import BROKER_URL, rmq_options

T = 10.0
MESSAGE_ID = "0123456789abcdef0123456789abcdef"


def _aiormq_bytes(channel: int, frame_max: int, exchange: str, key: str, body: bytes, **props: Any) -> bytes:
    """What aiormq 6.9's ``Channel.basic_publish`` writes for the same publish (its frames, pamqp's marshalling)."""
    properties = pamqp.commands.Basic.Properties(
        correlation_id=props.get("correlation_id"),
        reply_to=props.get("reply_to"),
        delivery_mode=props.get("delivery_mode", 1),
        headers=props.get("headers") or {},
        user_id=props.get("user_id"),
        message_id=MESSAGE_ID,
    )
    frames: list[Any] = [
        pamqp.commands.Basic.Publish(exchange=exchange, routing_key=key),
        ContentHeader(properties=properties, body_size=len(body)),
    ]
    largest = frame_max - 8
    if body:
        frames += (
            [ContentBody(body)]
            if len(body) < largest
            else [ContentBody(body[i : i + largest]) for i in range(0, len(body), largest)]
        )
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@pytest.mark.parametrize(
    ("channel", "frame_max", "body", "props"),
    [
        (1, 131072, b"", {}),
        (3, 131072, b"reply", {"correlation_id": "c-1", "headers": {"x-pc-subject": "state_changed", "flag": True}}),
        (7, 4096, b"y" * 10_000, {"reply_to": "r", "user_id": "guest", "delivery_mode": 2, "correlation_id": "é"}),
        (7, 4096, b"y" * 4088, {}),
        (7, 4096, b"y" * 4087, {"headers": {"n": 5, "s": "ü" * 40}}),
    ],
    ids=["empty", "reply", "split-body", "exactly-one-frame", "just-under"],
)
def test_marshal_publish_writes_the_bytes_aiormq_writes(
    channel: int, frame_max: int, body: bytes, props: dict[str, Any]
) -> None:
    ours = marshal_publish(channel, frame_max, "kiwipy.messages", "[rpc].x", body, message_id=MESSAGE_ID, **props)
    assert ours == _aiormq_bytes(channel, frame_max, "kiwipy.messages", "[rpc].x", body, **props)


def test_marshal_publish_refuses_a_routing_key_too_long() -> None:
    with pytest.raises(ValueError, match="255"):
        marshal_publish(1, 131072, "", "k" * 256, b"")


async def _publishes_keep_their_order(names: dict[str, str]) -> tuple[list[int], list[int]]:
    """Broadcasts issued at once (more than aiormq's write queue holds, so some wait for room) arrive in order;
    publishes to a route made with a nowait bind amid them all arrive (the bind went first)."""
    sender = RmqCommunicator(BROKER_URL, **rmq_options(names))
    listener = RmqCommunicator(BROKER_URL, **rmq_options(names))
    try:
        await asyncio.wait_for(sender.connect(), T)
        await asyncio.wait_for(listener.connect(), T)
        seen: list[int] = []
        routed: list[int] = []
        every = asyncio.Event()
        total = 400

        def on_broadcast(_comm: Any, body: Any, *_rest: Any) -> None:
            seen.append(body)
            if len(seen) == total:
                every.set()

        await asyncio.wait_for(listener.add_broadcast_subscriber(on_broadcast), T)
        conn = sender.connection
        queue = await conn.sub_channel.declare_queue(exclusive=True, auto_delete=True)
        key = f"route.{uuid.uuid4().hex}"

        async def bind_then_publish() -> None:
            await bind_nowait(queue, conn.fast_msg_exchange, key, conn.fast_channel)
            await asyncio.gather(
                *(conn.publish(conn.fast_msg_exchange, b"%d" % i, key, mandatory=False) for i in range(50))
            )

        async def broadcasts(numbers: range) -> None:
            # new publishes keep coming while earlier ones wait for room in the write queue (some loop turns
            # apart): a later one must not take a slot freed for an earlier one
            sent = []
            for i in numbers:
                sent.append(asyncio.ensure_future(sender.broadcast_send(i)))
                if i % 7 == 0:
                    await asyncio.sleep(0)
            await asyncio.gather(*sent)

        await asyncio.wait_for(broadcasts(range(total // 2)), T)
        await asyncio.wait_for(asyncio.gather(bind_then_publish(), broadcasts(range(total // 2, total))), T)
        await asyncio.wait_for(every.wait(), T)
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                routed.append(int(message.body))
                if len(routed) == 50:
                    break
        return seen, routed
    finally:
        await asyncio.wait_for(listener.close(), T)
        await asyncio.wait_for(sender.close(), T)


def test_fast_publishes_arrive_in_order_after_a_nowait_bind(names: dict[str, str], broker_url: str) -> None:
    seen, routed = asyncio.run(asyncio.wait_for(_publishes_keep_their_order(names), 4 * T))
    assert seen == list(range(400))
    assert routed == list(range(50))


async def _closed_channel_errors(names: dict[str, str]) -> tuple[BaseException | None, BaseException | None]:
    comm = RmqCommunicator(BROKER_URL, **rmq_options(names))
    try:
        await asyncio.wait_for(comm.connect(), T)
        conn = comm.connection
        assert conn.robust is not None
        errors: list[BaseException | None] = []
        for close in (_close_owner, _close_underlay):
            channel = aio_pika.Channel(conn.robust, publisher_confirms=False)  # not robust: it stays closed
            await channel.initialize()
            exchange = await conn.declare_exchange(channel, names["message_exchange"])
            await close(exchange)
            try:
                await conn.publish(exchange, b"lost", "anyone", mandatory=False)
                errors.append(None)
            except BaseException as exc:  # noqa: BLE001 - the error is what is asserted
                errors.append(exc)
        return errors[0], errors[1]
    finally:
        await asyncio.wait_for(comm.close(), T)


async def _close_owner(exchange: aio_pika.abc.AbstractExchange) -> None:
    """Closed by its owner."""
    await exchange.channel.close()


async def _close_underlay(exchange: aio_pika.abc.AbstractExchange) -> None:
    """Closed beneath aio-pika's channel (as when the broker closes it)."""
    underlay = await exchange.channel.get_underlay_channel()
    await underlay.close()


def test_a_publish_on_a_closed_channel_raises_connection_lost(names: dict[str, str], broker_url: str) -> None:
    by_owner, beneath = asyncio.run(_closed_channel_errors(names))
    assert isinstance(by_owner, ConnectionLost), by_owner
    assert isinstance(beneath, ConnectionLost), beneath


async def _named_on_the_reply_channel(worker: RmqCommunicator, client: RmqCommunicator) -> None:
    """Return once ``client`` has a broadcast that ``worker`` sent after its last bind: a nowait bind is in place
    before the worker's later publishes are routed, so a client learns a route's name only that way (_connection.py)."""
    token = uuid.uuid4().hex
    heard = asyncio.Event()

    def on_broadcast(_comm: Any, body: Any, *_rest: Any) -> None:
        if body == token:
            heard.set()

    identifier = await asyncio.wait_for(client.add_broadcast_subscriber(on_broadcast), T)
    try:
        await asyncio.wait_for(worker.broadcast_send(token), T)
        await asyncio.wait_for(heard.wait(), T)
    finally:
        await asyncio.wait_for(client.remove_broadcast_subscriber(identifier), T)


async def _unbinds_together(names: dict[str, str]) -> tuple[list[BaseException], list[str]]:
    """Routes added, then removed all at once (their unbinds share round trips): each is gone, the rest work."""
    worker = RmqCommunicator(BROKER_URL, **rmq_options(names))
    client = RmqCommunicator(BROKER_URL, **rmq_options(names))
    try:
        await asyncio.wait_for(worker.connect(), T)
        await asyncio.wait_for(client.connect(), T)
        keys = [uuid.uuid4().hex for _ in range(60)]
        for key in keys:
            await asyncio.wait_for(worker.add_rpc_subscriber(lambda _c, msg: msg, key), T)
        assert worker._nowait_binds is True
        await asyncio.wait_for(asyncio.gather(*(worker.remove_rpc_subscriber(key) for key in keys[:50])), T)
        await _named_on_the_reply_channel(worker, client)
        outcomes: list[BaseException] = []
        for key in keys[:50:7]:
            try:
                await asyncio.wait_for(client.rpc_send(key, "ping"), T)
            except ProcessUnreachable as exc:
                outcomes.append(exc)
        answers = [await asyncio.wait_for(client.rpc_send(key, key), T) for key in keys[50:]]
        assert not {f"[rpc].{key}" for key in keys[:50]} & {key for (_, key) in worker._rpc_queue._bindings}
        return outcomes, answers
    finally:
        await asyncio.wait_for(client.close(), T)
        await asyncio.wait_for(worker.close(), T)


def test_unbinds_in_flight_together_each_remove_their_route(names: dict[str, str], broker_url: str) -> None:
    unreachable, answers = asyncio.run(asyncio.wait_for(_unbinds_together(names), 6 * T))
    assert len(unreachable) == len(range(0, 50, 7))
    assert len(answers) == 10


async def _unbinds_as_the_channel_closes(names: dict[str, str]) -> tuple[int, str]:
    """Unbinds in flight while the channel they go on closes: every removal returns (none waits for an answer
    that will not come), and the reopened channel binds and routes as before."""
    worker = RmqCommunicator(BROKER_URL, **rmq_options(names))
    client = RmqCommunicator(BROKER_URL, **rmq_options(names))
    try:
        await asyncio.wait_for(worker.connect(), T)
        await asyncio.wait_for(client.connect(), T)
        keys = [uuid.uuid4().hex for _ in range(40)]
        for key in keys:
            await asyncio.wait_for(worker.add_rpc_subscriber(lambda _c, msg: msg, key), T)
        conn = worker.connection
        underlay = await conn.fast_channel.get_underlay_channel()
        removals = [asyncio.ensure_future(worker.remove_rpc_subscriber(key)) for key in keys]
        await asyncio.sleep(0)  # the first unbinds are written; the rest queue behind them
        await asyncio.wait_for(underlay.close(), T)
        done, pending = await asyncio.wait(removals, timeout=T)
        assert not pending, f"{len(pending)} removals still waiting after the channel closed"
        fresh = uuid.uuid4().hex
        deadline = asyncio.get_running_loop().time() + T
        while True:  # the robust channel reopens on its own; until then a bind may fail like any broker call
            try:
                await asyncio.wait_for(worker.add_rpc_subscriber(lambda _c, msg: msg, fresh), T)
                break
            except ConnectionLost:
                assert asyncio.get_running_loop().time() < deadline, "the channel did not come back"
                await asyncio.sleep(0.05)
        await _named_on_the_reply_channel(worker, client)
        answer = await asyncio.wait_for(client.rpc_send(fresh, "after"), T)
        return len(done), answer
    finally:
        await asyncio.wait_for(client.close(), T)
        await asyncio.wait_for(worker.close(), T)


def test_unbinds_in_flight_when_their_channel_closes_all_return(names: dict[str, str], broker_url: str) -> None:
    returned, answer = asyncio.run(asyncio.wait_for(_unbinds_as_the_channel_closes(names), 6 * T))
    assert returned == 40
    assert answer == "after"
