"""The ``process-comms`` command, driven as a real subprocess against the real broker and a real worker."""

from __future__ import annotations

import concurrent.futures
import datetime
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

import pika
import pytest

import process_comms
from process_comms.cli import main as cli
from tests.conftest import broker_url_as

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "process_comms.cli"]
#: The CLI as a terminal user runs it: Ctrl-C raises KeyboardInterrupt even when the test suite itself runs
#: with SIGINT ignored (a background job of a non-interactive shell), which Python would pass on to the child.
CLI_AT_A_TERMINAL = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from process_comms.cli.main import main; sys.exit(main())",
]
RUN_TIMEOUT = 60
READY_TIMEOUT = 30
STOP_TIMEOUT = 15

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != cli.ENV_BROKER}
    env.update(extra)
    return env


def _global_options(broker_url: str, names: dict[str, str]) -> list[str]:
    return [
        "--broker",
        broker_url,
        "--message-exchange",
        names["message_exchange"],
        "--task-exchange",
        names["task_exchange"],
        "--task-queue",
        names["task_queue"],
    ]


class LineReader:
    """Reads a pipe on a thread, so the test can wait for a line with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:  # closed at end of output: no unclosed-file warning
            for line in stream:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line, or None at end of stream; fails the test after ``timeout`` seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line within {timeout} s")


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("process-comms: error: "), lines[0]
    return lines[0]


@pytest.fixture
def rmq_cleanup(broker_url: str, names: dict[str, str]) -> Iterator[None]:
    """Delete the test's task queue and exchanges at teardown (the CLI declares them durable / non-auto-delete)."""
    yield
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.queue_delete(queue=names["task_queue"])
        channel.exchange_delete(exchange=names["message_exchange"])
        channel.exchange_delete(exchange=names["task_exchange"])
    finally:
        connection.close()


@pytest.fixture
def run(broker_url: str, names: dict[str, str], rmq_cleanup: None) -> Run:
    """Run ``process-comms <global options> ARGS`` (bounded) with this test's broker names."""

    def run_cli(*args: str, options: list[str] | None = None, env: dict[str, str] | None = None) -> Any:
        opts = _global_options(broker_url, names) if options is None else options
        return subprocess.run(
            [*CLI, *opts, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env if env is not None else _env(),
        )

    return run_cli


@pytest.fixture
def worker(broker_url: str, names: dict[str, str], rmq_cleanup: None, tmp_path: Path) -> Iterator[None]:
    """A ``process-comms worker`` subprocess; ready when it prints 'worker ready', stopped by SIGTERM (exit 0)."""
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
        reader = LineReader(proc.stdout)
        line = reader.next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
        assert "Traceback" not in err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


def _in_parallel(call: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[call(item) for item in items]``, run at once (each command is a bounded subprocess)."""
    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def _launch_waiter(run: Run, cls: str = "tests.procs:Waiter") -> str:
    result = run("launch", cls, "--nowait")
    assert result.returncode == 0, result.stderr
    pid = result.stdout.strip()
    uuid.UUID(pid)
    return pid


# -- the command itself --------------------------------------------------------------------------
def test_console_script_exists() -> None:
    script = shutil.which("process-comms", path=str(Path(sys.executable).parent))
    assert script is not None, "pip install -e . should create the process-comms console script"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env())
    assert result.returncode == 0
    assert "exit codes:" in result.stdout


def test_help_documents_every_exit_code() -> None:
    result = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT)
    assert result.returncode == 0
    assert cli.__doc__ is not None
    doc_codes = cli.__doc__.split("Exit codes:")[1].strip().splitlines()
    for line in doc_codes:
        assert " ".join(line.split()) in " ".join(result.stdout.split()), line
    for code in (0, 1, 2, 3, 4, 5, 6, 7):
        assert f"\n  {code}  " in result.stdout


def test_missing_broker_is_a_usage_error() -> None:
    result = subprocess.run(
        [*CLI, "status", "1"], capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=ROOT, env=_env()
    )
    assert result.returncode == cli.EXIT_USAGE
    assert "PROCESS_COMMS_BROKER" in _one_line_error(result)


def test_wrong_password_exits_6_without_printing_it(run: Run, names: dict[str, str]) -> None:
    secret = f"not-the-password-{uuid.uuid4().hex[:8]}"
    bad = _global_options(broker_url_as("guest", secret), names)
    commands = [
        ["status", "1"],
        ["launch", "tests.procs:Add"],
        ["queue"],
        ["worker", "--persister", "memory://", "--allow", "tests.procs"],
    ]
    for args, result in zip(commands, _in_parallel(lambda args: run(*args, options=bad), commands), strict=True):
        assert result.returncode == cli.EXIT_BROKER, (args, result.stderr)
        assert "refused the credentials" in _one_line_error(result), args
        assert secret not in result.stdout + result.stderr, args


def test_usage_errors_exit_2(run: Run) -> None:
    commands = [
        ["launch", "tests.procs:Add", "--inputs", "[1, 2]"],
        ["launch", "no-colon"],
        ["pause"],
        ["watch", "--count", "0"],
    ]
    bad_inputs, bad_class, no_pid, bad_count = _in_parallel(lambda args: run(*args), commands)
    assert "JSON object" in _one_line_error(bad_inputs)
    assert "module:Name" in _one_line_error(bad_class)
    assert "--all" in _one_line_error(no_pid)
    assert "--count" in _one_line_error(bad_count)
    for result in (bad_inputs, bad_class, no_pid, bad_count):
        assert result.returncode == cli.EXIT_USAGE


def test_launch_without_a_worker_times_out(run: Run, names: dict[str, str]) -> None:
    result = run("--timeout", "1", "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}')
    assert result.returncode == cli.EXIT_TIMEOUT
    assert names["task_queue"] in _one_line_error(result)


def test_status_of_unknown_pid_exits_3(run: Run, broker_url: str, names: dict[str, str]) -> None:
    # the broker URL from the environment this time
    options = _global_options(broker_url, names)[2:]
    result = run("status", str(uuid.uuid4()), options=options, env=_env(PROCESS_COMMS_BROKER=broker_url))
    assert result.returncode == cli.EXIT_UNREACHABLE
    assert "not reachable" in _one_line_error(result)
    assert result.stdout == ""


# -- with a worker -------------------------------------------------------------------------------
def test_launch_outputs_failure_and_rejection(run: Run, worker: None) -> None:
    commands = [
        ["--json", "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}'],
        ["launch", "tests.procs:Steps", "--inputs", '{"n": 2}', "--persist"],
        ["launch", "tests.procs:Fails"],
        ["launch", "os:system", "--inputs", '{"a": 1}'],
    ]
    added, stepped, failed, refused = _in_parallel(lambda args: run(*args), commands)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"sum": 3}
    assert stepped.returncode == 0, stepped.stderr
    assert json.loads(stepped.stdout) == {"steps": 2, "resumed_from": 0}

    assert failed.returncode == cli.EXIT_REMOTE
    assert "this process always fails" in _one_line_error(failed)
    assert refused.returncode == cli.EXIT_REJECTED  # the worker only runs classes from tests.procs
    assert "not allowed" in _one_line_error(refused)


def test_launch_nowait_then_status(run: Run, worker: None) -> None:
    pid = _launch_waiter(run)
    table, as_json = _in_parallel(lambda args: run(*args), [["status", pid], ["--json", "status", pid]])
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["PID", "STATE", "PAUSED", "PROGRESS", "STATUS", "CLASS"]
    assert row.split()[0] == pid and row.split()[-1] == "tests.procs:Waiter"
    assert row.split()[1] in ("running", "waiting") and row.split()[2] == "no"
    assert header.index("STATE") == row.index(row.split()[1])  # aligned columns

    assert as_json.returncode == 0, as_json.stderr
    [record] = json.loads(as_json.stdout)
    assert record["ok"] is True and record["pid"] == pid
    assert record["result"]["pid"] == pid and record["result"]["paused"] is False
    assert record["result"]["class"] == "tests.procs:Waiter"
    assert run("kill", pid).returncode == 0


def test_pause_play_kill_by_pid(run: Run, worker: None) -> None:
    pid = _launch_waiter(run)
    unknown = str(uuid.uuid4())

    paused = run("pause", pid, unknown, "--message", "held for review")
    assert paused.returncode == cli.EXIT_UNREACHABLE  # the worst outcome; the known pid still got its line
    assert paused.stdout.strip() == f"{pid} paused"
    assert unknown in _one_line_error(paused)
    [record] = json.loads(run("--json", "status", pid).stdout)
    assert record["result"]["paused"] is True and record["result"]["status"] == "held for review"

    played = run("play", pid)
    assert played.returncode == 0, played.stderr
    assert played.stdout.strip() == f"{pid} playing"
    [record] = json.loads(run("--json", "status", pid).stdout)
    assert record["result"]["paused"] is False

    killed = run("--json", "kill", pid, "--message", "enough")
    assert killed.returncode == 0, killed.stderr
    assert json.loads(killed.stdout) == [{"pid": pid, "ok": True, "result": True}]


def test_watch_sees_state_changes(run: Run, worker: None) -> None:
    launched = run("launch", "tests.procs:Ticker", "--nowait")  # waiting <-> running every 50 ms
    assert launched.returncode == 0, launched.stderr
    pid = launched.stdout.strip()
    watched = run("watch", pid, "--count", "2")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        stamp, who, cls, old, arrow, new = line.split()  # '<time> <pid> <class> <from> -> <to>'
        assert datetime.datetime.fromisoformat(stamp) and cls == "tests.procs:Ticker"
        assert who == pid and arrow == "->" and {old, new} <= {"running", "waiting"}
    assert run("kill", pid, "--force").stdout.strip() == f"{pid} killed"


def test_kill_all(run: Run, worker: None, broker_url: str, names: dict[str, str]) -> None:
    pids = set(_in_parallel(lambda _: _launch_waiter(run, "tests.procs:Ticker"), [1, 2]))  # state changes flow
    watch = subprocess.Popen(
        [*CLI_AT_A_TERMINAL, *_global_options(broker_url, names), "--json", "watch", *sorted(pids), "--seconds", "50"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert watch.stdout is not None
        reader = LineReader(watch.stdout)
        assert reader.next(READY_TIMEOUT) is not None  # the first event: the watcher is subscribed

        result = run("kill", "--all")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().startswith("kill sent to every process: 2 process(es) answered")

        killed: set[str] = set()
        deadline = time.monotonic() + 30
        while killed != pids:
            line = reader.next(max(0.1, deadline - time.monotonic()))
            assert line is not None, "watch ended before both processes were killed"
            event = json.loads(line)
            if event["to"] == "killed":
                killed.add(event["pid"])
        watch.send_signal(signal.SIGINT)  # Ctrl-C is how a watch ends normally
        assert watch.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=STOP_TIMEOUT)
        if watch.stderr is not None:
            watch.stderr.close()


def test_queue_shows_the_worker(run: Run, worker: None, names: dict[str, str]) -> None:
    result = run("--json", "queue")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"queue": names["task_queue"], "messages": 0, "consumers": 1}
    human = run("queue")
    assert human.stdout.strip().endswith("0 task(s) waiting, 1 worker(s) consuming")

    missing = run("queue", "--task-queue", f"{names['task_queue']}-missing")
    assert missing.returncode == cli.EXIT_ERROR
    assert "does not exist" in _one_line_error(missing)


# -- small pieces, in process ------------------------------------------------------------------------
def test_parse_pid() -> None:
    u = uuid.uuid4()
    assert cli.parse_pid(str(u)) == u
    assert cli.parse_pid(u.hex) == u
    assert cli.parse_pid("42") == 42
    assert cli.parse_pid("job-7") == "job-7"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_tty_and_for_many() -> None:
    def done(value: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(value)
        return fut

    tty = _Tty()
    pending: Future[Any] = Future()
    results = cli.wait_many({"a": done(1), "b": done(2), "c": pending}, 0.2, tty)
    assert results["a"] == 1 and results["b"] == 2
    assert isinstance(results["c"], process_comms.TimeoutError)
    assert "\r[" in tty.getvalue() and "2/3" in tty.getvalue()

    quiet = io.StringIO()
    cli.wait_many({"a": done(1), "b": done(2)}, 1, quiet)
    assert quiet.getvalue() == ""
    single = _Tty()
    cli.wait_many({"a": done(1)}, 1, single)
    assert single.getvalue() == ""


def test_progress_bar_frames_on_a_tty() -> None:
    """The bare bar (process_comms.client.display.Progress, style "bar"): redrawn in place, a newline at the end."""
    ok: Future[Any] = Future()
    ok.set_result(1)
    failed: Future[Any] = Future()
    failed.set_exception(ValueError("no"))
    pending: Future[Any] = Future()
    tty = _Tty()
    results = cli.wait_many({"a": ok, "b": failed, "c": pending}, 0.2, tty)
    assert results["a"] == 1 and isinstance(results["b"], ValueError)
    assert isinstance(results["c"], process_comms.TimeoutError) and pending.cancelled()
    # a frame before the first wait and one at the deadline (the bar redraws at most every 0.2 s)
    assert tty.getvalue() == "\r[#############.......] 2/3" + "\r[#############.......] 2/3\n"
