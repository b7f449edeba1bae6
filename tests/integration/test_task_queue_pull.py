"""Pulling tasks from a task queue (kiwipy's ``RmqTaskQueue`` iteration), held to kiwipy 0.9's expectations.

AiiDA's ``verdi process repair`` and ``verdi devel rabbitmq tasks list/analyze`` walk the launch queue with
``for task in communicator.task_queue(<launch queue>)`` and settle tasks by hand; the semantics are those of
``src/kiwipy/rmq/tasks.py`` (``RmqIncomingTask``) and its tests (``test/rmq/test_tasks.py``,
``test/rmq/test_rmq_thread_communicator.py``), written again here against our communicators, in both of
their modes, on the thread and asyncio faces, on the real broker. Every wait is bounded by ``T``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import uuid
from collections.abc import Iterator
from typing import Any

import kiwipy
import kiwipy.rmq
import plumpy
import pytest

import process_comms
from tests.conftest import BROKER_URL, rmq_options
from tests.integration.test_plumpy_compat import T, _delete_declared, aiida_names  # noqa: F401 - fixture

pytestmark = pytest.mark.broker


def result_of(fut: Any) -> Any:
    """The final value of a send in either mode (kiwipy's mode nests one future per ``pending`` reply)."""
    return plumpy.futures.unwrap_kiwi_future(fut).result(T)


@pytest.fixture(params=["process_comms", "kiwipy"])
def queue(request: pytest.FixtureRequest, names: dict[str, str]) -> Iterator[Any]:
    """A fresh named task queue of one thread communicator in each mode (``api=``)."""
    with process_comms.connect(BROKER_URL, api=request.param, **rmq_options(names)) as comm:
        yield comm.task_queue(f"pull-{uuid.uuid4().hex[:8]}")


def test_next_task_processing_replies_the_outcome(queue: Any) -> None:
    sent = queue.task_send("Hello!")
    with queue.next_task(timeout=T) as task:
        assert task.state == "pending" and task.body == "Hello!" and not task.no_reply
        with task.processing() as outcome:
            outcome.set_result("Goodbye")
        assert task.state == "finished"
    assert result_of(sent) == "Goodbye"
    with pytest.raises(process_comms.QueueEmpty):  # acked: gone from the queue
        with queue.next_task(timeout=T):
            pass


def test_iterating_processes_every_queued_task_then_none(queue: Any) -> None:
    sent = [queue.task_send(i) for i in range(10)]
    seen = []
    for task in queue:
        seen.append(task.body)
        with task.processing() as outcome:
            outcome.set_result(task.body * 10)
    assert sorted(seen) == list(range(10))
    assert [result_of(fut) for fut in sent] == [i * 10 for i in range(10)]
    assert list(queue) == []


def test_tasks_left_pending_by_an_iteration_go_back_to_the_queue(queue: Any) -> None:
    sent = [queue.task_send(i) for i in range(10)]
    for task in queue:
        if task.body < 5:
            task.process().set_result(task.body * 10)
    assert [result_of(fut) for fut in sent[:5]] == [0, 10, 20, 30, 40]
    assert not any(fut.done() for fut in sent[5:])
    for task in queue:
        task.process().set_result(task.body * 10)
    assert [result_of(fut) for fut in sent] == [i * 10 for i in range(10)]


def test_a_forgotten_outcome_requeues_the_task(queue: Any) -> None:
    sent = queue.task_send(1)
    with queue.next_task(timeout=T) as task:
        outcome = task.process()  # taken on: the block's end leaves it alone
    with pytest.raises(process_comms.QueueEmpty):
        with queue.next_task(timeout=T):
            pass
    del outcome
    gc.collect()  # the outcome is gone unset: the task goes back to the queue
    deadline = concurrent.futures.Future[None]()
    for _ in range(200):  # the requeue runs on the loop: poll next_task, bounded
        with queue.next_task(timeout=T, fail=False) as task:
            if task is not None:
                assert task.body == 1
                task.process().set_result(10)
                deadline.set_result(None)
                break
        with pytest.raises(concurrent.futures.TimeoutError):
            deadline.result(0.05)
    assert deadline.done(), "the forgotten task never came back"
    assert result_of(sent) == 10


def test_an_empty_queue_raises_queue_empty_as_kiwipy(queue: Any) -> None:
    with pytest.raises(kiwipy.QueueEmpty) as caught:
        with queue.next_task(timeout=T):
            pass
    assert isinstance(caught.value, process_comms.ProcessCommsError)
    with queue.next_task(timeout=T, fail=False) as task:
        assert task is None


def test_an_error_while_processing_is_the_reply_and_settles_the_task(queue: Any) -> None:
    sent = queue.task_send("Do this")
    with pytest.raises(RuntimeError):
        with queue.next_task(timeout=T) as task:
            with task.processing():
                raise RuntimeError("Cannae do it, captain!")
    with pytest.raises(kiwipy.RemoteException, match="Cannae do it"):
        result_of(sent)
    with pytest.raises(kiwipy.QueueEmpty):
        with queue.next_task(timeout=T):
            pass


def test_requeue_and_no_reply(queue: Any) -> None:
    queue.task_send("later", no_reply=True)
    with queue.next_task(timeout=T) as task:
        assert task.no_reply
        task.requeue()
        assert task.state == "requeued"
        with pytest.raises(asyncio.InvalidStateError):
            task.process()
    with queue.next_task(timeout=T) as task:
        assert task.body == "later"
        task.process().set_result(None)


def test_aiida_repair_walks_the_launch_queue_a_kiwipy_peer_filled(broker_url: str) -> None:
    """``verdi process repair``: tasks a kiwipy client queued, listed through the launch queue's own name."""
    names = aiida_names()
    kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": broker_url}, **names)
    try:
        for pid in (1, 2, 3):
            kiwi.task_send({"task": "continue", "pid": pid}, no_reply=True)
        with process_comms.connect(broker_url, api="kiwipy", **names) as ours:
            launch_queue = ours.task_queue(names["task_queue"])
            assert sorted(task.body["pid"] for task in launch_queue) == [1, 2, 3]
            for task in launch_queue:  # all requeued by the walk above: take pid 2 out
                if task.body["pid"] == 2:
                    task.process().set_result(True)
        left = kiwi.task_queue(names["task_queue"])
        assert sorted(task.body["pid"] for task in left) == [1, 3]
    finally:
        kiwi.close()


def test_the_embedded_back_end_hands_out_queued_tasks() -> None:
    with process_comms.connect() as comm:
        queue = comm.task_queue("embedded")
        sent = queue.task_send(6)
        with queue.next_task(timeout=T) as task:
            task.process().set_result(task.body * 7)
        assert sent.result(T) == 42
        assert list(queue) == []


def test_asyncio_communicator_task_queue(broker_url: str, names: dict[str, str]) -> None:
    async def main() -> None:
        async with process_comms.RmqCommunicator(broker_url, **rmq_options(names)) as comm:
            aqueue = await comm.task_queue(f"pull-{uuid.uuid4().hex[:8]}")
            sent = asyncio.ensure_future(aqueue.task_send("Hello!"))
            done = None
            for _ in range(200):  # the send is on its way: poll, bounded
                async with aqueue.next_task(timeout=T, fail=False) as task:
                    if task is not None:
                        async with task.processing() as outcome:
                            assert task.body == "Hello!"
                            outcome.set_result("Goodbye")
                        done = task
                        break
                await asyncio.sleep(0.02)
            assert done is not None and done.state == "finished"
            assert await sent == "Goodbye"
            many = [asyncio.ensure_future(aqueue.task_send(i)) for i in range(5)]
            seen: list[int] = []
            while len(seen) < 5:
                async for pulled in aqueue:
                    seen.append(pulled.body)
                    pulled.process().set_result(pulled.body + 1)
                await asyncio.sleep(0.01)
            assert sorted(await asyncio.gather(*many)) == [1, 2, 3, 4, 5]
            with pytest.raises(kiwipy.QueueEmpty):
                async with aqueue.next_task(timeout=T):
                    pass

    asyncio.run(asyncio.wait_for(main(), T * 2))
