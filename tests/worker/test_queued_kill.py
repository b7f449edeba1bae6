"""A task still queued, killed before any worker started it, never runs (issues 13 and 14).

The caller picks the pid (``init_kwargs={"pid": ...}``, as ``process-comms launch`` does), so it can
kill the process before a worker takes the task: the fleet records the kill, and the worker that takes
the task later drops it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import process_comms
from tests.conftest import BROKER_URL
from tests.procs import Steps, Waiter

pytestmark = pytest.mark.broker  # every test talks to RabbitMQ at BROKER_URL, not through the broker_url fixture

T = 20.0


def test_a_queued_task_killed_before_a_worker_takes_it_never_runs(names: dict[str, str], tmp_path: Path) -> None:
    steps = tmp_path / "steps.log"
    worker = process_comms.Worker(
        BROKER_URL,
        persister=f"sqlite:///{tmp_path}/store.db",
        allowed_modules=["tests.procs"],
        task_prefetch_count=1,  # one slot: the second launch waits in the queue
        testing_mode=True,
        **names,
    ).start()
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            # a persisted nowait launch keeps its task (and so the slot) until its process ends
            busy = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, persist=True, nowait=True).result(T)
            queued_pid = uuid.uuid4()
            queued: Any = ctl.launch_process(
                Steps, init_kwargs={"inputs": {"n": 3, "log": str(steps)}, "pid": queued_pid}, nowait=True
            )
            # no worker holds it yet: the caller is told so, and the fleet records the kill for the queued task
            with pytest.raises(process_comms.ProcessUnreachable, match="will be dropped"):
                ctl.kill_process(queued_pid, "not wanted any more").result(T)
            assert not queued.done()  # still in the queue: no worker has taken it
            assert ctl.kill_process(busy).result(T) is True  # frees the slot: the worker takes the queued task
            try:
                queued.result(T)
            except process_comms.ProcessCommsError:
                pass  # dropped with an error reply (killed), or answered with its pid: either way, it must not run
            status = ctl.get_status(queued_pid).result(T)
            assert status["state_name"] == "killed"
            assert ctl.wait_for_process(queued_pid, timeout=T).result(T + 5) == "killed"
    finally:
        worker.stop()
    assert not steps.exists()  # not one step ran
