"""A task handed back (``HandBack``, worker/_recycle.py), or delivered as the last task subscriber leaves, goes
back to the queue however often it was delivered: never answered ``TaskRejected``, so never lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import process_comms
from process_comms.transports.base import HandBack
from tests.conftest import BROKER_URL, rmq_options

T = 30.0


def test_a_task_delivered_after_the_last_subscriber_left_is_requeued(broker_url: str, names: dict[str, str]) -> None:
    leaving = process_comms.connect(BROKER_URL, **rmq_options(names))
    staying = process_comms.connect(BROKER_URL, **rmq_options(names))
    client = process_comms.connect(BROKER_URL, **rmq_options(names))
    calls: list[Any] = []
    left = threading.Event()

    def leave(_comm: Any, _task: Any) -> Any:
        # the first delivery: leave (the removal runs before the task comes back), and refuse it: requeued once,
        # it is delivered again, redelivered, to this consumer until the broker has its cancel
        calls.append(_task)
        task = asyncio.get_running_loop().create_task(leaving.core.remove_task_subscriber(ident))
        task.add_done_callback(lambda _: left.set())
        raise process_comms.TaskRejected("leaving")

    leave.loop_safe = True  # type: ignore[attr-defined]
    try:
        ident = leaving.add_task_subscriber(leave)
        result = client.task_send({"x": 1})
        assert left.wait(T)
        staying.add_task_subscriber(lambda _comm, task: task)
        assert result.result(T) == {"x": 1}
        assert len(calls) == 1
    finally:
        for comm in (leaving, staying, client):
            comm.close()


def test_a_redelivered_task_handed_back_is_requeued_not_answered(broker_url: str, names: dict[str, str]) -> None:
    """A plain refusal of a task delivered before is answered with TaskRejected; a hand-back never is."""
    calls: list[bool] = []

    def subscriber(_comm: Any, task: Any) -> Any:
        calls.append(True)
        if len(calls) == 1:
            raise process_comms.TaskRejected("not now")  # requeued once: delivered again, redelivered
        if len(calls) == 2:
            raise HandBack("recycling")  # redelivered, handed back: requeued again
        return task

    subscriber.loop_safe = True  # type: ignore[attr-defined]
    worker_comm = process_comms.connect(BROKER_URL, **rmq_options(names))
    client = process_comms.connect(BROKER_URL, **rmq_options(names))
    try:
        worker_comm.add_task_subscriber(subscriber)
        assert client.task_send({"x": 1}).result(T) == {"x": 1}
        assert len(calls) == 3
    finally:
        worker_comm.close()
        client.close()
