"""``process-comms worker --max-processes N`` exits 0 once its N processes have ended, saying why, and under
``process-comms daemon`` circus starts a fresh worker in its place (issue 26, worker/_recycle.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import process_comms
from tests.cli.test_commands import rmq_cleanup  # noqa: F401 - a fixture of the daemon fixture
from tests.cli.test_daemon import SETTLE_TIMEOUT, Daemon, daemon
from tests.conftest import BROKER_URL
from tests.faults._support import ROOT, controller, prefix
from tests.procs import Add
from tests.waiting import wait_until

__all__ = ["daemon", "prefix"]  # fixtures

T = 30.0
ADD = {"inputs": {"a": 2, "b": 3}}


def test_the_worker_command_exits_0_after_max_processes(prefix: str, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "process_comms.cli", "--broker", BROKER_URL, "--prefix", prefix]
    err = tmp_path / "worker.err"
    with open(err, "w") as err_file:
        worker = subprocess.Popen(
            [*cli, "worker", "--persister", "memory://", "--allow", "tests.procs", "--max-processes", "2"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
        try:
            wait_until(lambda: "taking tasks" in err.read_text(), T, "the worker to take tasks")
            with controller(prefix) as ctl:
                assert [ctl.launch_process(Add, init_kwargs=ADD).result(T) for _ in range(2)] == [{"sum": 5}] * 2
            assert worker.wait(T) == 0, err.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    log = err.read_text()
    assert "worker recycled: its 2 processes (--max-processes) have ended" in log, log
    assert "Traceback" not in log, log


def test_the_daemon_starts_a_fresh_worker_after_a_recycle(daemon: Daemon, names: dict[str, str]) -> None:
    daemon.ok("daemon", "start", "1", "--allow", "tests.procs", "--max-processes", "2", "--stop-timeout", "10")
    first = daemon.status()["workers"]
    assert len(first) == 1
    comm = process_comms.connect(BROKER_URL, **names)
    with process_comms.RemoteProcessThreadController(comm) as ctl:
        assert [ctl.launch_process(Add, init_kwargs=ADD).result(T) for _ in range(2)] == [{"sum": 5}] * 2
        fresh = wait_until(
            lambda: set(daemon.status()["workers"]) - set(first),
            SETTLE_TIMEOUT,
            "a fresh worker after the recycle",
            interval=0.2,
        )
        assert first[0] not in daemon.status()["workers"]
        # the fresh worker takes tasks
        wait_until(
            lambda: daemon.fleet_pids() == fresh, SETTLE_TIMEOUT, "the fresh worker to answer `workers`", interval=0.2
        )
        assert ctl.launch_process(Add, init_kwargs=ADD).result(T) == {"sum": 5}
    log = (daemon.dir / "worker.log").read_text()
    assert f"[{first[0]}]" in log and "worker recycled" in log, log
