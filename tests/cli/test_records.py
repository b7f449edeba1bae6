"""``process-comms list / show / report / status`` on process records (issue 14): real broker, a CLI worker in
its own OS process, the commands as subprocesses that launched nothing themselves."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_comms.cli import main as cli
from tests.cli.test_commands import (  # noqa: F401 (fixtures)
    CLI,
    CLI_AT_A_TERMINAL,
    READY_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    LineReader,
    Run,
    _env,
    _global_options,
    _in_parallel,
    _one_line_error,
    rmq_cleanup,
    run,
)
from tests.waiting import wait_until

PROCS = "tests.worker.records_procs"


@pytest.fixture
def worker(broker_url: str, names: dict[str, str], rmq_cleanup: None, tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    """A ``process-comms worker`` allowed to run the record tests' processes; yields its log file."""
    err_path = tmp_path / "worker.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [
                *CLI,
                *_global_options(broker_url, names),
                "worker",
                "--persister",
                f"sqlite:///{tmp_path}/w.db",
                "--allow",
                PROCS,
                "--allow",
                "tests.procs",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
        )
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout).next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        yield err_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _launch(run: Run, cls: str, *options: str) -> str:  # noqa: F811
    result = run("launch", f"{PROCS}:{cls}", "--nowait", *options)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_list_show_report_and_status_of_ended_and_live_processes(run: Run, worker: Path) -> None:  # noqa: F811
    finished = run("--json", "launch", f"{PROCS}:Reporter")
    assert json.loads(finished.stdout) == {"reported": True}, finished.stderr
    broken = run("launch", f"{PROCS}:Broken")
    assert broken.returncode == cli.EXIT_REMOTE
    live = _launch(run, "Sleeper")
    never = str(uuid.uuid4())

    listing, as_json = _in_parallel(lambda args: run(*args), [["list"], ["--json", "list"]])
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["PID", "CLASS", "STATE", "PAUSED", "PROGRESS", "WORKER", "AGE"]
    by_class = {row.split()[1]: row.split() for row in rows}
    assert by_class[f"{PROCS}:Reporter"][2] == "finished" and by_class[f"{PROCS}:Reporter"][4] == "done=1"
    assert by_class[f"{PROCS}:Broken"][2] == "excepted"
    assert by_class[f"{PROCS}:Sleeper"][:3] == [live, f"{PROCS}:Sleeper", "waiting"]
    assert by_class[f"{PROCS}:Sleeper"][4] == "done=1"  # progress "done=1 of=3" splits into two cells
    records = json.loads(as_json.stdout)
    assert [r["class"] for r in records] == [f"{PROCS}:Sleeper", f"{PROCS}:Broken", f"{PROCS}:Reporter"]
    reporter = str(records[2]["pid"])
    failed = str(records[1]["pid"])

    only, limited, since = _in_parallel(
        lambda args: run(*args),
        [["--json", "list", "--state", "excepted"], ["--json", "list", "--limit", "1"], ["list", "--since", "1h"]],
    )
    assert [r["pid"] for r in json.loads(only.stdout)] == [failed]
    assert [r["pid"] for r in json.loads(limited.stdout)] == [live]
    assert len(since.stdout.splitlines()) == 4

    show, report, status, unknown = _in_parallel(
        lambda args: run(*args),
        [["show", failed], ["report", reporter], ["status", reporter, failed, live], ["show", never]],
    )
    assert show.returncode == 0, show.stderr
    assert "state:     excepted" in show.stdout and "exception: ZeroDivisionError: division by zero" in show.stdout
    assert "1 / 0" in show.stdout  # the traceback's source line
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["REPORT: starting the work", "INFO: step 1 of 2"]
    assert status.returncode == 0, status.stderr
    head, *table = status.stdout.splitlines()
    assert head.split() == ["PID", "STATE", "PAUSED", "PROGRESS", "STATUS", "CLASS"]
    states = {row.split()[0]: row.split()[1] for row in table}
    assert states == {reporter: "finished", failed: "excepted", live: "waiting"}
    assert "ZeroDivisionError: division by zero" in next(row for row in table if row.startswith(failed))
    assert unknown.returncode == cli.EXIT_UNREACHABLE
    assert "no record" in _one_line_error(unknown)

    assert run("kill", live).returncode == 0
    [record] = json.loads(run("--json", "status", live).stdout)
    assert record["result"]["state_name"] == "killed" and record["result"]["record"] is True

    log = worker.read_text()
    assert f"process {reporter} ended: finished after" in log
    assert "excepted after" in log and "ZeroDivisionError: division by zero" in log and "1 / 0" in log


def test_list_with_no_worker_up_says_so(run: Run) -> None:  # noqa: F811
    result = run("--timeout", "5", "list")
    assert result.returncode == cli.EXIT_UNREACHABLE
    assert "no worker is up to answer for process records" in _one_line_error(result)


def test_ctrl_c_on_a_waiting_launch_prints_the_pid_to_kill(
    run: Run,  # noqa: F811
    worker: Path,
    broker_url: str,
    names: dict[str, str],
) -> None:
    launch = subprocess.Popen(
        [*CLI_AT_A_TERMINAL, *_global_options(broker_url, names), "launch", f"{PROCS}:Sleeper"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        # the process runs on the worker: the launch waits for its outputs now
        listed: list[dict[str, object]] = wait_until(
            lambda: json.loads(run("--json", "list", "--state", "waiting").stdout or "[]"),
            READY_TIMEOUT,
            "the launched process to show up in `list`",
            interval=0,  # each poll is a subprocess already
        )
        launch.send_signal(signal.SIGINT)
        out, err = launch.communicate(timeout=STOP_TIMEOUT)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.communicate(timeout=STOP_TIMEOUT)
    pid = str(listed[0]["pid"])
    assert launch.returncode == cli.EXIT_INTERRUPTED and out == ""
    assert f"interrupted: process {pid} may still run" in err and f"process-comms kill {pid}" in err
    killed = run("kill", pid)
    assert killed.returncode == 0 and killed.stdout.strip() == f"{pid} killed"
