"""Peers that die or stall: a controller killed mid-launch, a worker stopped with SIGSTOP mid-reply."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest

import process_comms
from tests.conftest import BROKER_URL
from tests.waiting import wait_until

from ._support import ROOT, controller

pytestmark = pytest.mark.slow


def test_processes_outlive_their_controller_and_obey_a_new_one(prefix: str, workers: Any) -> None:
    workers()
    with subprocess.Popen(  # closes its pipes on exit
        [sys.executable, "-m", "tests.faults.controller_main", "--broker", BROKER_URL, "--prefix", prefix],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the controller prints its pids once it has sent the launches
            assert line.strip(), proc.stderr.read() if proc.stderr else ""
            pids = [uuid.UUID(text) for text in line.split()]
            proc.send_signal(signal.SIGKILL)  # the controller dies mid-launch: some replies are still pending
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(15)
    with controller(prefix) as ctl:
        statuses = {pid: wait_until(lambda pid=pid: _status(ctl, pid), 30, f"process {pid}") for pid in pids}
        assert all(status["state_name"] in ("running", "waiting") for status in statuses.values())
        assert all(ctl.pause_process(pid).result(15) is True for pid in pids)
        assert all(ctl.get_status(pid).result(15)["paused"] for pid in pids)
        assert all(ctl.kill_process(pid).result(15) is True for pid in pids)


def _status(ctl: process_comms.RemoteProcessThreadController, pid: Any) -> Any:
    try:
        return ctl.get_status(pid, timeout=5).result(10)
    except process_comms.ProcessUnreachable:
        return None  # the launch task is not yet taken


def test_a_stopped_worker_makes_calls_time_out_and_the_library_stays_usable(prefix: str, workers: Any) -> None:
    worker = workers()
    with controller(prefix) as ctl:
        pid = ctl.launch_process("tests.procs:Waiter", init_kwargs={"inputs": {}}, nowait=True).result(15)
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(process_comms.TimeoutError):
                ctl.get_status(pid, timeout=1.0).result(10)
            with pytest.raises(process_comms.TimeoutError):
                ctl.pause_process(pid, timeout=1.0).result(10)
            # the library stays usable: other calls answer at once
            with pytest.raises(process_comms.ProcessUnreachable):
                ctl.get_status(uuid.uuid4(), timeout=5).result(10)
        finally:
            worker.proc.send_signal(signal.SIGCONT)
        # the late pause went through after SIGCONT: a deadline does not undo what was sent
        status = wait_until(lambda: _paused(ctl, pid), 30, "the worker to answer again")
        assert status["paused"] is True
        assert ctl.kill_process(pid).result(15) is True


def _paused(ctl: process_comms.RemoteProcessThreadController, pid: Any) -> Any:
    try:
        status = ctl.get_status(pid, timeout=5).result(10)
    except process_comms.TimeoutError:
        return None
    return status if status["paused"] else None
