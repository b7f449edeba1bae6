"""A route bound without waiting for ``bind-ok`` (transports/rmq/_nowait.py) is in place before this
communicator's own next RPC to it: that RPC goes on the publisher-confirms channel, not on the channel of the
bind, and the broker orders only one channel's methods. Before the fix, an RPC sent right after
``add_rpc_subscriber`` found no route now and then ("process ... is not reachable": a process reported gone
that was there), as AiiDA's runner does when a process controls another it just started in the same runner."""

from __future__ import annotations

import pytest

import process_comms
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.broker

#: Subscribe-then-call rounds.
ROUNDS = 50
#: Broadcasts put on the bind's channel just before it, so the broker still works through them when the RPC
#: (on another channel) arrives: a busy worker's state broadcasts do the same.
AHEAD = 200
#: Seconds any one call may take.
CALL_TIMEOUT = 10.0


def test_an_rpc_right_after_a_nowait_bind_finds_its_route(names: dict[str, str]) -> None:
    comm = process_comms.connect(BROKER_URL, **names)
    try:
        comm.add_rpc_subscriber(lambda _comm, msg: msg, "first")  # the first bind waits for bind-ok
        unreachable = []
        for index in range(ROUNDS):
            key = f"route-{index}"
            for _ in range(AHEAD):
                comm.broadcast_send(None, subject="ahead")  # not waited for: they go out in order, ahead of the bind
            comm.add_rpc_subscriber(lambda _comm, msg: msg, key)  # nowait from here on
            try:
                assert comm.rpc_send(key, index).result(CALL_TIMEOUT) == index
            except process_comms.ProcessUnreachable:
                unreachable.append(key)
        assert not unreachable, f"{len(unreachable)} of {ROUNDS} RPCs found no route right after its bind"
    finally:
        comm.close()
