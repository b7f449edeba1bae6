"""An operator's day at the command line: no dead ends and no wrong words (real broker, real subprocesses).

Each test drives ``python -m process_comms.cli`` as a subprocess, with workers in their own OS processes.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from process_comms.cli import main as cli
from tests.cli.test_commands import (  # noqa: F401 (fixtures)
    CLI,
    READY_TIMEOUT,
    ROOT,
    RUN_TIMEOUT,
    STOP_TIMEOUT,
    LineReader,
    Run,
    _env,
    _global_options,
    _launch_waiter,
    _one_line_error,
    rmq_cleanup,
    run,
    worker,
)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _pythonpath(*extra: Path) -> str:
    return ":".join([*(str(p) for p in extra), str(ROOT)])


@contextlib.contextmanager
def _worker(
    broker_url: str, names: dict[str, str], tmp_path: Path, *args: str, pythonpath: tuple[Path, ...] = ()
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A ``process-comms worker ARGS`` subprocess that said ``worker ready``; SIGTERM (exit 0) at the end."""
    err_path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*CLI, *_global_options(broker_url, names), "worker", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(PYTHONPATH=_pythonpath(*pythonpath)),
        )
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout).next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        yield proc, err_path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


# -- worker --allow ------------------------------------------------------------------------------------
def _worker_once(broker_url: str, names: dict[str, str], env: dict[str, str], *args: str) -> Any:
    """``process-comms worker ARGS`` expected to refuse to start: one that starts fails the test (bounded)."""
    try:
        return subprocess.run(
            [*CLI, *_global_options(broker_url, names), "worker", "--persister", "memory://", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the worker started and ran: {exc.stdout!r}")


def test_worker_refuses_an_allowed_module_that_cannot_be_imported(
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    typo = _worker_once(broker_url, names, _env(), "--allow", "tests.procs", "--allow", "mysim.prcs")
    assert typo.returncode == cli.EXIT_USAGE
    assert "worker ready" not in typo.stdout
    line = _one_line_error(typo)
    assert "--allow mysim.prcs" in line and "no module named 'mysim'" in line.lower()

    broken = f"pc_broken_{uuid.uuid4().hex[:8]}"
    _write_module(tmp_path, broken, "raise RuntimeError('no licence server')\n")
    failing = _worker_once(broker_url, names, _env(PYTHONPATH=_pythonpath(tmp_path)), "--allow", broken)
    assert failing.returncode == cli.EXIT_USAGE
    assert "worker ready" not in failing.stdout
    line = _one_line_error(failing)
    assert f"--allow {broken}" in line and "RuntimeError: no licence server" in line


# -- launch --timeout -----------------------------------------------------------------------------------
def test_launch_timeout_names_the_pid_it_was_sent_with(
    run: Run,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    late = run("--timeout", "2", "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}', "--nowait")
    assert late.returncode == cli.EXIT_TIMEOUT
    line = _one_line_error(late)
    assert "may be running" in line
    match = _UUID.search(line)
    assert match is not None, line
    pid = match.group(0)
    assert late.stdout.strip() == pid  # --nowait: stdout is the pid, as when the answer comes
    # the task waits in the queue under that pid: a worker that comes up runs it, and the pid answers
    with _worker(broker_url, names, tmp_path, "--persister", f"sqlite:///{tmp_path}/w.db", "--allow", "tests.procs"):
        shown = run("--json", "show", pid)
        assert shown.returncode == 0, shown.stderr
        [record] = json.loads(shown.stdout)
        assert record["result"]["pid"] == pid


# -- play of an ended process ---------------------------------------------------------------------------
def test_play_of_an_ended_process_says_so_like_pause(run: Run, worker: None) -> None:  # noqa: F811
    pid = _launch_waiter(run)
    assert run("kill", pid).returncode == 0
    paused, played = run("pause", pid), run("play", pid)
    assert paused.stdout.strip() == f"{pid} not paused: it had already ended"
    assert played.stdout.strip() == f"{pid} not playing: it had already ended"
    assert played.returncode == paused.returncode


# -- pids ---------------------------------------------------------------------------------------------
def test_invalid_pid_is_a_usage_error_and_a_text_pid_is_a_pid(run: Run) -> None:  # noqa: F811
    bad = run("status", "a*b")
    assert bad.returncode == cli.EXIT_USAGE
    line = _one_line_error(bad)
    assert "invalid pid 'a*b'" in line
    text = run("status", "not-a-pid")  # a text pid is valid (launch --pid job-7): no process has it
    assert text.returncode == cli.EXIT_UNREACHABLE
    line = _one_line_error(text)
    assert "not-a-pid" in line and "read as a text pid" in line


# -- the postgres extra ---------------------------------------------------------------------------------
def test_postgres_store_without_the_extra_names_it(run: Run, broker_url: str, names: dict[str, str]) -> None:  # noqa: F811
    no_psycopg = [
        sys.executable,
        "-c",
        "import sys; sys.modules['psycopg'] = None; "  # as if the extra were not installed
        "from process_comms.cli.main import main; sys.exit(main())",
    ]
    for args in (["worker", "--allow", "tests.procs"], ["list"]):
        result = subprocess.run(
            [*no_psycopg, *_global_options(broker_url, names), *args, "--store", "postgresql://x@127.0.0.1/test"]
            if args[0] == "list"
            else [
                *no_psycopg,
                *_global_options(broker_url, names),
                *args,
                "--persister",
                "postgresql://x@127.0.0.1/test",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_env(),
        )
        line = _one_line_error(result)
        assert "pip install '.[postgres]'" in line and "process_comms[postgres]" in line, line
        assert result.returncode == cli.EXIT_ERROR


# -- a class added after the worker started -------------------------------------------------------------
def test_class_added_after_start_says_why(run: Run, broker_url: str, names: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    module = f"pc_late_{uuid.uuid4().hex[:8]}"
    code = "from process_comms.worker.process import Process\n\nclass First(Process):\n    async def run(self):\n"
    _write_module(tmp_path, module, code + "        return {}\n")
    with _worker(broker_url, names, tmp_path, "--persister", "memory://", "--allow", module, pythonpath=(tmp_path,)):
        first = run("launch", f"{module}:First")  # the worker has the module now
        assert first.returncode == 0, first.stderr
        late = code.replace("First", "Later") + "        return {'late': True}\n"
        with open(tmp_path / f"{module}.py", "a") as file:
            file.write("\n\n" + late)
        result = run("launch", f"{module}:Later")
        assert result.returncode == cli.EXIT_REJECTED
        line = _one_line_error(result)
        assert f"module '{module}' has no attribute 'Later'" in line, line
        assert "restart it to load" in line and "imported" in line


# -- the profile's store and task queue type ------------------------------------------------------------
def _profile(tmp_path: Path, broker_url: str, names: dict[str, str], **keys: str) -> dict[str, str]:
    config = tmp_path / "config" / "process-comms"
    config.mkdir(parents=True)
    lines = [f'broker = "{broker_url}"', *(f'{key} = "{value}"' for key, value in names.items())]
    lines += [f'{key} = "{value}"' for key, value in keys.items()]
    (config / "config.toml").write_text("[profiles.day]\n" + "\n".join(lines) + "\n")
    return _env(XDG_CONFIG_HOME=str(tmp_path / "config"), PROCESS_COMMS_PROFILE="day")


def _queue_type(broker_url: str, queue: str) -> str:
    """The queue's type as the broker reports it (``rabbitmqctl list_queues name type``)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return parts[1]
    pytest.fail(f"no queue {queue!r} on the broker")


def test_worker_takes_the_profiles_store_and_queue_type(
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = tmp_path / "records.db"
    env = _profile(tmp_path, broker_url, names, store=f"sqlite:///{store}", task_queue_type="quorum")
    err_path = tmp_path / "worker.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*CLI, "worker", "--allow", "tests.procs"], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout).next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        assert store.exists()  # the worker writes the profile's store
        assert _queue_type(broker_url, names["task_queue"]) == "quorum"
        launched = subprocess.run(
            [*CLI, "launch", "tests.procs:Add", "--inputs", '{"a": 2, "b": 3}'],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
        )
        assert launched.returncode == 0, launched.stderr
        assert json.loads(launched.stdout) == {"sum": 5}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def test_worker_task_queue_type_option(run: Run, broker_url: str, names: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    with _worker(
        broker_url, names, tmp_path, "--persister", "memory://", "--allow", "tests.procs", "--task-queue-type", "quorum"
    ):
        assert _queue_type(broker_url, names["task_queue"]) == "quorum"
        added = run("launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 1}')
        assert added.returncode == 0, added.stderr
    bad = run("worker", "--persister", "memory://", "--allow", "tests.procs", "--task-queue-type", "stream")
    assert bad.returncode == cli.EXIT_USAGE


# -- --all counts -------------------------------------------------------------------------------------
def test_all_says_how_many_processes_it_reached(run: Run, worker: None) -> None:  # noqa: F811
    pids = [_launch_waiter(run), _launch_waiter(run)]
    paused = run("pause", "--all")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip().startswith("pause sent to every process: 2 process(es) answered"), paused.stdout
    played = run("--json", "play", "--all")
    answer = json.loads(played.stdout)
    assert answer["answered"] == 2 and sorted(answer["pids"]) == sorted(pids)
    killed = run("kill", "--all")
    assert killed.stdout.strip().startswith("kill sent to every process: 2 process(es) answered"), killed.stdout


# -- report --follow and module loggers ---------------------------------------------------------------
_CHATTY = """
    import asyncio
    import logging

    from process_comms.worker.process import Process

    LOG = logging.getLogger(__name__)

    class Chatty(Process):
        async def run(self):
            LOG.info("module says hello %s", self.inputs["who"])
            LOG.debug("too quiet to keep")
            self.report("a report line")
            await asyncio.sleep(float(self.inputs["seconds"]))
            LOG.warning("module says goodbye")
            return {}

    class Blocking(Process):
        def run(self):  # a plain run, on the executor
            LOG.info("blocking says hello %s", self.inputs["who"])
            return {}
"""


def test_report_follow_and_module_logger_lines(
    run: Run,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    module = f"pc_chatty_{uuid.uuid4().hex[:8]}"
    _write_module(tmp_path, module, _CHATTY)
    with _worker(broker_url, names, tmp_path, "--persister", "memory://", "--allow", module, pythonpath=(tmp_path,)):
        launched = run("launch", f"{module}:Chatty", "--nowait", "--inputs", '{"who": "operator", "seconds": 3}')
        assert launched.returncode == 0, launched.stderr
        pid = launched.stdout.strip()
        followed = run("report", pid, "--follow")  # bounded by RUN_TIMEOUT; ends when the process ends
        assert followed.returncode == 0, followed.stderr
        texts = [line.split(": ", 1)[1] for line in followed.stdout.splitlines() if ": " in line]
        assert texts == ["module says hello operator", "a report line", "module says goodbye"], followed.stdout
        assert "WARNING: module says goodbye" in followed.stdout
        again = run("--json", "report", pid)
        assert [line["text"] for line in json.loads(again.stdout)["log"]] == texts

        # two processes of one module at once: each record has its own lines only; a plain run's lines too
        other = run("launch", f"{module}:Chatty", "--nowait", "--inputs", '{"who": "B", "seconds": 1}')
        both = run("launch", f"{module}:Chatty", "--nowait", "--inputs", '{"who": "C", "seconds": 1}')
        blocking = run("launch", f"{module}:Blocking", "--nowait", "--inputs", '{"who": "D"}')
        for launched, who in ((other, "B"), (both, "C"), (blocking, "D")):
            assert launched.returncode == 0, launched.stderr
            followed = run("--json", "report", launched.stdout.strip(), "--follow")
            assert followed.returncode == 0, followed.stderr
            lines = [json.loads(line)["text"] for line in followed.stdout.splitlines()]
            expected = (
                ["blocking says hello D"]
                if who == "D"
                else [f"module says hello {who}", "a report line", "module says goodbye"]
            )
            assert lines == expected


# -- the dashboard extra --------------------------------------------------------------------------------
def test_dashboard_without_its_extra_says_how_to_install_it(broker_url: str, names: dict[str, str]) -> None:
    without = "import sys; sys.modules['uvicorn'] = None; from process_comms.cli.main import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", without, *_global_options(broker_url, names), "dashboard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_env(),
    )
    assert result.returncode == cli.EXIT_USAGE
    line = _one_line_error(result)
    assert "pip install '.[dashboard]'" in line and "uvicorn is missing" in line
    readme = (ROOT / "README.md").read_text()
    assert "pip install 'process_comms[dashboard]'" not in readme and "pip install '.[dashboard]'" in readme
    assert "Chromium" in readme


def test_module_logger_lines_land_in_the_record(
    run: Run,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    module = f"pc_chatty_{uuid.uuid4().hex[:8]}"
    _write_module(tmp_path, module, _CHATTY)
    with _worker(broker_url, names, tmp_path, "--persister", "memory://", "--allow", module, pythonpath=(tmp_path,)):
        pids = [str(uuid.uuid4()), str(uuid.uuid4())]
        chatty = run("launch", f"{module}:Chatty", "--pid", pids[0], "--inputs", '{"who": "E", "seconds": 0}')
        blocking = run("launch", f"{module}:Blocking", "--pid", pids[1], "--inputs", '{"who": "F"}')
        assert chatty.returncode == 0 and blocking.returncode == 0, chatty.stderr + blocking.stderr
        logs = [json.loads(run("--json", "report", pid).stdout)["log"] for pid in pids]
        assert [(line["level"], line["text"]) for line in logs[0]] == [
            ("INFO", "module says hello E"),
            ("REPORT", "a report line"),
            ("WARNING", "module says goodbye"),
        ]
        assert [line["text"] for line in logs[1]] == ["blocking says hello F"]
