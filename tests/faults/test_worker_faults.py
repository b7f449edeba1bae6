"""Worker faults on the real broker, workers in their own OS processes: crash, graceful hand-back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import rabbitmqctl
from tests.procs import Steps
from tests.waiting import wait_until

from ._support import controller


def steps_logged(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sigkilled_worker_process_continues_elsewhere_from_its_checkpoint(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    first = workers()
    with controller(prefix) as ctl:
        futures = [
            ctl.launch_process(Steps, init_kwargs={"inputs": {"n": 30, "delay": 0.05, "log": str(log)}}, persist=True)
            for _ in range(3)
        ]
        wait_until(lambda: len(steps_logged(log)) >= 15, 30, "some steps to run")
        first.sigkill()
        crashed_at = len(steps_logged(log))
        workers()
        outputs = [f.result(60) for f in futures]
    assert all(out["steps"] == 30 for out in outputs)
    assert any(out["resumed_from"] > 0 for out in outputs), outputs
    # every step of every process ran; a step re-runs only if it was cut off before its checkpoint
    by_pid: dict[str, list[int]] = {}
    for pid, step in steps_logged(log):
        by_pid.setdefault(pid, []).append(step)
    assert len(by_pid) == 3
    repeats = sum(len(steps) - len(set(steps)) for steps in by_pid.values())
    assert all(set(steps) == set(range(30)) for steps in by_pid.values())
    assert repeats <= 3, f"at most one unfinished step per process may re-run, got {repeats} (crash at {crashed_at})"


@pytest.mark.slow
def test_graceful_stop_hands_processes_to_another_worker(prefix: str, workers: Any, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    first = workers()
    with controller(prefix) as ctl:
        future = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 40, "delay": 0.05, "log": str(log)}}, persist=True
        )
        wait_until(lambda: len(steps_logged(log)) >= 10, 30, "some steps to run")
        assert first.terminate() == 0
        logged_at_stop = len(steps_logged(log))
        workers()
        outputs = future.result(60)
    assert outputs["steps"] == 40
    # the step that was running at the stop is the only one that may run again
    assert outputs["resumed_from"] >= logged_at_stop - 1 >= 9
    steps = [step for _, step in steps_logged(log)]
    assert sorted(set(steps)) == list(range(40))
    assert len(steps) - len(set(steps)) <= 1


@pytest.mark.slow
def test_a_persisted_nowait_launch_survives_its_worker(prefix: str, workers: Any, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    first = workers()
    with controller(prefix) as ctl:
        pid = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 30, "delay": 0.05, "log": str(log)}}, persist=True, nowait=True
        ).result(15)
        wait_until(lambda: len(steps_logged(log)) >= 8, 30, "some steps to run")
        first.sigkill()  # the worker held the task although the caller already had the pid
        workers()
        # until the new worker takes the redelivered task the pid is unreachable: follow the step log
        wait_until(lambda: any(step == 29 for _, step in steps_logged(log)), 60, "the last step")
    steps = [step for logged_pid, step in steps_logged(log) if logged_pid == str(pid)]
    assert sorted(set(steps)) == list(range(30))
    assert len(steps) - len(set(steps)) <= 1


def _close_connections_of(os_pid: int) -> int:
    """Force-close the broker connections of one OS process (as a consumer timeout closes a channel)."""
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        name, _, props = line.partition("\t")
        if f":{os_pid}" in props and "process_comms" in props:
            rabbitmqctl("close_connection", name, "fault test: redeliver the held task")
            closed += 1
    return closed


@pytest.mark.slow
def test_a_task_redelivered_while_its_process_runs_elsewhere_is_not_run_twice(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    """The broker takes back a held task from a live worker (connection loss, or a consumer timeout) and
    gives it to another: the claim in the shared store makes the second worker wait, not run a copy."""
    log = tmp_path / "steps.log"
    first = workers()
    with controller(prefix) as ctl:
        future = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 40, "delay": 0.1, "log": str(log)}}, persist=True
        )
        workers()  # a second worker is consuming when the task comes back
        wait_until(lambda: len(steps_logged(log)) >= 5, 30, "some steps to run")
        assert _close_connections_of(first.proc.pid) >= 1
        outputs = future.result(90)
        # the redelivered copy settles too (it waited on the claim, then found the process finished)
        wait_until(lambda: _queue_idle(prefix), 30, "the redelivered task to be settled")
    assert outputs["steps"] == 40
    steps = [step for _, step in steps_logged(log)]
    assert sorted(steps) == list(range(40)), "a step ran twice: the process was run by two workers"
    assert len({os_pid for os_pid in _step_hosts(log)}) == 1  # the first worker ran it from start to end


def _queue_idle(prefix: str) -> bool:
    for line in rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged").splitlines():
        parts = line.split()
        if parts and parts[0] == f"{prefix}.process.queue":
            return parts[1:] == ["0", "0"]
    return False


def _step_hosts(log: Path) -> list[str]:
    return [line.split()[2] for line in log.read_text().splitlines() if line.strip()]
