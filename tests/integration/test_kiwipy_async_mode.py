"""``connect_kiwipy_async`` held to kiwipy 0.9's asyncio ``RmqCommunicator`` shapes (``src/kiwipy/rmq/
communicator.py``, ``tasks.py``): ``await send`` answers a future once the broker has the request, nested one level
per ``pending`` reply, an unroutable RPC raises from the ``await``; a kiwipy asyncio peer on the same names sees
the same. On the real broker; every wait bounded by ``T``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import kiwipy
import kiwipy.rmq
import pytest

import process_comms
from tests.conftest import BROKER_URL, rmq_options

pytestmark = pytest.mark.broker

T = 10.0


def _names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"message_exchange": f"kwa-{tag}.m", "task_exchange": f"kwa-{tag}.t", "task_queue": f"kwa-{tag}.q"}


def run(main: Callable[[process_comms.KiwipyAsyncCommunicator], Awaitable[None]]) -> None:
    async def go() -> None:
        comm = await process_comms.connect_kiwipy_async({"url": BROKER_URL}, **rmq_options(_names()))
        try:
            await main(comm)
        finally:
            await comm.disconnect()

    asyncio.run(asyncio.wait_for(go(), T * 3))


def test_rpc_send_answers_a_future_of_the_reply() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        await comm.add_rpc_subscriber(lambda _c, msg: f"re: {msg}", "peer")
        fut = await comm.rpc_send("peer", "hi")
        assert asyncio.isfuture(fut)
        assert await asyncio.wait_for(fut, T) == "re: hi"

    run(main)


def test_a_subscriber_future_is_one_more_level() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        later: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await comm.add_task_subscriber(lambda _c, task: later)
        first = await comm.task_send("meaning")
        second = await asyncio.wait_for(first, T)  # the pending reply: the subscriber's future, still open
        assert asyncio.isfuture(second) and not second.done()
        later.set_result(42)
        assert await asyncio.wait_for(second, T) == 42

    run(main)


def test_unroutable_rpc_raises_from_the_await() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        with pytest.raises(kiwipy.UnroutableError):
            await asyncio.wait_for(comm.rpc_send("nobody-here", None), T)

    run(main)


def test_no_reply_task_and_broadcast_answer_kiwipys_values() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await comm.add_task_subscriber(lambda _c, task: got.set_result(task))
        assert await comm.task_send("fire", no_reply=True) is None
        assert await asyncio.wait_for(got, T) == "fire"
        assert await comm.broadcast_send("all", subject="s") is True

    run(main)


def test_remote_exception_is_on_the_future_not_the_await() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        def fail(_c: Any, _task: Any) -> None:
            raise RuntimeError("cannot")

        await comm.add_task_subscriber(fail)
        fut = await comm.task_send("x")  # the broker has it: no error yet
        with pytest.raises(kiwipy.RemoteException, match="cannot"):
            await asyncio.wait_for(fut, T)

    run(main)


def test_named_queue_task_send_and_pull() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        queue = await comm.task_queue(f"named-{uuid.uuid4().hex[:8]}")
        outcome = await queue.task_send(5)
        assert asyncio.isfuture(outcome) and not outcome.done()
        async with queue.next_task(timeout=T) as task:
            task.process().set_result(task.body * 2)
        assert await asyncio.wait_for(outcome, T) == 10

    run(main)


def test_a_kiwipy_asyncio_peer_answers_ours_with_the_same_levels() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        names = _names()
        peer = await kiwipy.rmq.async_connect({"url": BROKER_URL}, **rmq_options(names))
        ours = await process_comms.connect_kiwipy_async({"url": BROKER_URL}, **rmq_options(names))
        try:
            later: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            await peer.add_rpc_subscriber(lambda _c, _m: later, "kiwi")
            first = await ours.rpc_send("kiwi", None)
            second = await asyncio.wait_for(first, T)
            assert asyncio.isfuture(second)
            later.set_result("done")
            assert await asyncio.wait_for(second, T) == "done"
        finally:
            await ours.disconnect()
            await peer.disconnect()

    run(main)


def test_our_controller_over_it_stays_flat() -> None:
    async def main(comm: process_comms.KiwipyAsyncCommunicator) -> None:
        await comm.add_rpc_subscriber(lambda _c, _m: {"state": "running"}, "p1")
        controller = process_comms.RemoteProcessController(comm)
        assert await controller.get_status("p1") == {"state": "running"}

    run(main)


def test_every_level_is_bounded_by_the_calls_deadline() -> None:
    async def go() -> None:
        comm = await process_comms.connect_kiwipy_async(BROKER_URL, rpc_timeout=0.5, **rmq_options(_names()))
        try:
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await comm.add_rpc_subscriber(lambda _c, _m: never, "silent")
            first = await comm.rpc_send("silent", None)
            second = await asyncio.wait_for(first, T)  # the pending reply came
            with pytest.raises(process_comms.TimeoutError):
                await asyncio.wait_for(second, T)  # kiwipy would wait for ever
        finally:
            await comm.disconnect()

    asyncio.run(asyncio.wait_for(go(), T * 3))
