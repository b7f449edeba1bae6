"""The one task-settlement rule (transports/base.py: settle_task), as both back ends apply it.

The RabbitMQ side is exercised by the fault suites (tests/faults/); here, the embedded back end, which
before sharing the rule acked a persisted nowait launch at once instead of holding it until its process ended.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from process_comms import EmbeddedCommunicator, InMemoryPersister, ProcessLauncher, RemoteProcessController
from process_comms.transports.base import settle_task
from process_comms.wire.codec import get_codec
from tests import procs
from tests.waiting import wait_until_async

T = 10.0


def test_embedded_holds_a_persisted_nowait_launch_until_its_process_ends() -> None:
    async def main() -> None:
        async with EmbeddedCommunicator() as comm:
            with ProcessLauncher(persister=InMemoryPersister()) as launcher:
                await comm.add_task_subscriber(launcher)
                ctl = RemoteProcessController(comm)
                pid = await asyncio.wait_for(
                    ctl.launch_process(procs.Waiter, init_kwargs={"inputs": {}}, persist=True, nowait=True), T
                )
                assert isinstance(pid, uuid.UUID)
                # the caller has its pid, and the task is still held by the worker that runs the process
                assert len(comm._inflight) == 1
                assert await asyncio.wait_for(ctl.kill_process(pid), T) is True
                await wait_until_async(lambda: not comm._inflight, T, "the held task is settled once its process ended")
                assert not comm._tasks  # acked, not handed back

    asyncio.run(main())


def test_embedded_does_not_hold_a_non_persisted_nowait_launch() -> None:
    async def main() -> None:
        async with EmbeddedCommunicator() as comm:
            with ProcessLauncher() as launcher:
                await comm.add_task_subscriber(launcher)
                ctl = RemoteProcessController(comm)
                pid = await asyncio.wait_for(
                    ctl.launch_process(procs.Waiter, init_kwargs={"inputs": {}}, nowait=True), T
                )
                await wait_until_async(lambda: not comm._inflight, T, "a non-persisted launch is settled at once")
                assert await asyncio.wait_for(ctl.kill_process(pid), T) is True

    asyncio.run(main())


class _Recorded:
    """An IncomingTask that records how it was settled."""

    def __init__(self, redelivered: bool) -> None:
        self.redelivered, self.correlation_id = redelivered, "c-1"
        self.verbs: list[str] = []
        self.replies: list[dict[str, Any]] = []

    async def ack(self) -> bool:
        self.verbs.append("ack")
        return True

    async def requeue(self) -> None:
        self.verbs.append("requeue")

    async def reject(self) -> None:
        self.verbs.append("reject")

    def wants_reply(self, no_reply: bool) -> bool:
        return not no_reply

    async def reply(self, reply: dict[str, Any]) -> None:
        self.replies.append(reply)


def _refuse(_comm: Any, _task: Any) -> Any:
    import kiwipy

    raise kiwipy.TaskRejected("not mine")


@pytest.mark.parametrize(
    ("redelivered", "verbs", "replied"),
    [(False, ["requeue"], False), (True, ["ack"], True)],
    ids=["first-refusal-requeues", "second-refusal-replies"],
)
def test_a_refused_task_is_requeued_once_then_rejected_with_a_reply(
    redelivered: bool, verbs: list[str], replied: bool
) -> None:
    codec = get_codec()
    incoming = _Recorded(redelivered)
    asyncio.run(settle_task(incoming, codec.encode(({"task": "launch"}, False)), [_refuse], None, codec, lambda: False))
    assert incoming.verbs == verbs
    assert bool(incoming.replies) is replied
    if replied:
        assert incoming.replies[0]["error_type"] == "TaskRejected"


def test_a_malformed_task_is_rejected_once_with_an_error_reply() -> None:
    codec = get_codec()
    incoming = _Recorded(False)
    asyncio.run(settle_task(incoming, codec.encode("not a pair"), [_refuse], None, codec, lambda: False))
    assert incoming.verbs == ["reject"]
    assert [r["error_type"] for r in incoming.replies] == ["InvalidTask"]
