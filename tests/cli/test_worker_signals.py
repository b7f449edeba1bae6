"""`process-comms worker` stops on SIGTERM/SIGINT only: a SIGSTOP/SIGCONT (a debugger, a job-control stop, a
container pause) leaves it running. Before the fix in process_comms/cli/worker.py, CPython's sigtimedwait
returned a siginfo of garbage (si_signo 1) once such a stop outlasted its timeout, and the worker took it for a
stop signal: it stopped gracefully and its unpersisted processes were marked lost."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.cli.test_commands import READY_TIMEOUT, STOP_TIMEOUT, LineReader, Run, rmq_cleanup, run  # noqa: F401
from tests.store_fleet import PROCS, start_cli_worker

pytestmark = pytest.mark.broker

#: How long the worker stays stopped: longer than the worker's 0.25 s look at its signals, several times over.
STOPPED_FOR = 1.0


def test_a_stopped_and_continued_worker_keeps_running(
    run: Run,  # noqa: F811 - the fixture imported above
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    err_path = tmp_path / "worker.err"
    worker = start_cli_worker(broker_url, names, f"sqlite:///{tmp_path}/w.db", err_path)
    try:
        assert worker.stdout is not None
        assert LineReader(worker.stdout).next(READY_TIMEOUT) == "worker ready", err_path.read_text()
        sleeper = run("launch", f"{PROCS}:Sleeper", "--nowait").stdout.strip()

        worker.send_signal(signal.SIGSTOP)
        time.sleep(STOPPED_FOR)  # the scenario itself (a stop that lasts), not a wait for something to happen
        worker.send_signal(signal.SIGCONT)

        status = run("--json", "status", sleeper)
        assert status.returncode == 0, (status.stderr, err_path.read_text())
        [answer] = json.loads(status.stdout)
        assert answer["ok"] and answer["result"]["state"] == "ProcessState.WAITING", answer
        assert worker.poll() is None, err_path.read_text()
        assert "stopping gracefully" not in err_path.read_text()

        assert run("kill", sleeper).returncode == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=STOP_TIMEOUT)
