"""A caller that stops waiting for a call does not break the connection it was sent on.

Seen in CI (tests/dashboard/test_api.py, Python 3.12): ``wait_for_process`` saw the process end and cancelled
its status poll just as the broker returned the poll as unroutable (the process's route had gone). aiormq
6.9 then set the return's error on the cancelled confirmation future; the ``InvalidStateError`` killed the
publisher channel's reader, the channel wedged, and its close timed out into ``504 CHANNEL_ERROR``, which
closed the connection and failed the next launch with ``ConnectionLost``. The fix is in
``process_comms/transports/rmq/_connection.py`` (``_beyond_cancel``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from process_comms import ProcessUnreachable
from process_comms.transports.rmq import RmqCommunicator
from tests.conftest import BROKER_URL, rmq_options

ROUNDS = 150
T = 10.0


async def _cancel_as_the_return_arrives(names: dict[str, str]) -> list[BaseException]:
    """Send an RPC to a pid no one holds and cancel it from a broadcast that the broker sends back in the
    same read as the ``Basic.Return``; afterwards, one more RPC to such a pid must still say unreachable."""
    comm = RmqCommunicator(BROKER_URL, **rmq_options(names))
    try:
        await asyncio.wait_for(comm.connect(), T)
        in_flight: list[asyncio.Future[Any]] = []

        def cancel_it(*_args: Any) -> None:
            for call in in_flight:
                call.cancel()

        await asyncio.wait_for(comm.add_broadcast_subscriber(cancel_it), T)
        for i in range(ROUNDS):
            await asyncio.wait_for(comm.broadcast_send({"round": i}), T)
            call = asyncio.ensure_future(comm.rpc_send(str(uuid.uuid4()), {"intent": "status"}))
            in_flight[:] = [call]
            await asyncio.wait({call}, timeout=T)  # cancelled by the broadcast, or unreachable, or a hang
            assert call.done(), f"round {i}: the call neither ended nor was cancelled within {T} s"
        outcomes: list[BaseException] = []
        for _ in range(3):
            try:
                await asyncio.wait_for(comm.rpc_send(str(uuid.uuid4()), {"intent": "status"}), T)
            except BaseException as exc:  # noqa: BLE001 - the outcome is what is asserted
                outcomes.append(exc)
        return outcomes
    finally:
        await asyncio.wait_for(comm.close(), T)


def test_cancelling_a_call_as_the_broker_returns_it_leaves_the_connection_working(
    names: dict[str, str], broker_url: str
) -> None:
    outcomes = asyncio.run(_cancel_as_the_return_arrives(names))
    # before the fix: TimeoutError (the wedged channel never confirms) or ConnectionLost (the 504)
    assert [type(exc) for exc in outcomes] == [ProcessUnreachable] * 3, outcomes
