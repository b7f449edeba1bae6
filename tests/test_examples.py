"""Every example runs as its users run it: a subprocess from the repository root, checked by its output.

The broker examples use the real RabbitMQ with unique exchange and queue names, deleted afterwards.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from tests.conftest import delete_broker_objects

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0
COUNTDOWN = "examples.processes:Countdown"
WAITER = "examples.processes:LongWaiter"


def env_without_broker() -> dict[str, str]:
    """The environment of an example that must pick the embedded default (or take its URL from argv)."""
    env = dict(os.environ)
    env.pop("PROCESS_COMMS_BROKER", None)
    return env


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an example to its end (bounded) from the repository root."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env if env is not None else env_without_broker(),
    )


class Background:
    """An example that keeps running (a worker, a service); its output (stdout + stderr) is collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env if env is not None else env_without_broker(),
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at end of output: no unclosed-file warning
            for line in self.proc.stdout:
                self.lines.append(line)
                self._new.put(line)
        self._new.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output}")
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait (bounded) for the exit status; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"did not stop within {timeout} s:\n{self.output}")
        return self.proc.returncode


@pytest.fixture
def background() -> Iterator[Any]:
    """Start Background examples; any still running at the end of the test are killed."""
    started: list[Background] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Background:
        proc = Background(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


@pytest.fixture
def prefix(broker_url: str) -> Iterator[str]:
    """Unique exchange/queue names; the durable task queue and the exchanges are deleted afterwards."""
    prefix = f"pc-examples-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_broker_objects(prefix)


# -- quickstart -------------------------------------------------------------------------------------
def test_quickstart() -> None:
    done = run_example("examples/quickstart.py")
    assert done.returncode == 0, done.stderr
    assert "outputs: {'liftoff': True}" in done.stdout
    assert "paused: True" in done.stdout and "status: coffee break" in done.stdout
    assert "played: True" in done.stdout and "killed: True" in done.stdout


# -- remote worker + remote client -------------------------------------------------------------------
def test_remote_worker_and_client(broker_url: str, prefix: str, tmp_path: Path, background: Any) -> None:
    db = tmp_path / "checkpoints.db"
    worker = background("examples/remote_worker.py", broker_url, "--prefix", prefix, "--db", str(db))
    worker.wait_for("worker ready")

    client_env = {**env_without_broker(), "PROCESS_COMMS_BROKER": broker_url}  # the URL from the environment
    client = run_example("examples/remote_client.py", "--prefix", prefix, env=client_env)
    assert client.returncode == 0, client.stdout + client.stderr
    out = client.stdout
    assert re.search(r"countdown outputs: \{.*'liftoff': True.*\}", out)
    assert re.search(rf"state: (running|waiting) on host \{{.*'pid': {worker.proc.pid}", out), out
    assert "paused: True status: coffee break" in out
    assert "played: paused = False" in out
    assert "after the kill: ProcessUnreachable" in out or "after the kill: state killed" in out
    table = out.split("after pause_many:\n", 1)[1].splitlines()
    assert table[0].split() == ["pid", "state", "paused", "status", "class"]
    assert [row.split()[2:] for row in table[2:5]] == [["yes", "all", "hold", COUNTDOWN]] * 3
    assert out.count("'liftoff': True") == 4 and "countdowns finished: [{" in out
    assert out.rstrip().endswith("client done")
    assert "countdowns: [" in client.stderr and "3/3 done" in client.stderr  # the progress display

    assert worker.stop(signal.SIGTERM) == 0
    assert "worker stopped; handed back 0 process(es)" in worker.output
    with process_comms.SqlPersister(f"sqlite:///{db}") as store:  # the persisted countdowns were checkpointed
        finished = [store.load_checkpoint(cp.pid) for cp in store.get_checkpoints()]
    assert len(finished) == 3 and all(b["state"] == "finished" and b["progress"]["step"] == 40 for b in finished)


def test_remote_worker_stops_gracefully_on_sigint(
    broker_url: str, prefix: str, tmp_path: Path, background: Any
) -> None:
    worker = background("examples/remote_worker.py", broker_url, "--prefix", prefix, "--db", str(tmp_path / "c.db"))
    worker.wait_for("worker ready")
    assert worker.stop(signal.SIGINT) == 0
    assert "worker got SIGINT: stopping" in worker.output and "worker stopped" in worker.output


# -- crash and continue ------------------------------------------------------------------------------
def test_checkpoint_continue(broker_url: str, prefix: str) -> None:
    done = run_example(
        "examples/checkpoint_continue.py", broker_url, "--prefix", prefix, "--steps", "30", "--crash-after", "4"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[worker 1] worker ready" in out and "[worker 2] worker ready" in out
    crashed = int(re.search(r"worker 1 killed \(SIGKILL\); the last checkpoint is step (\d+)", out).group(1))  # type: ignore[union-attr]
    resumed = int(re.search(r"resumed from step (\d+) on worker 2", out).group(1))  # type: ignore[union-attr]
    assert 4 <= crashed < 30 and 0 < resumed <= crashed
    assert re.search(
        rf"summary: process \S+ crashed at step {crashed}, resumed from step {resumed}, finished 30 steps: OK", out
    )


# -- the threaded HTTP service -----------------------------------------------------------------------
class Http:
    """A tiny JSON client for the service (urllib, one connection per request)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        return self.request("POST", path, body if body is not None or raw is not None else {}, raw)


def lifecycle(http: Http, i: int) -> list[str]:
    """Launch, status, pause, play and kill one process through the service; return what went wrong."""
    problems: list[str] = []

    def expect(what: str, got: tuple[int, Any], code: int, check: Any = None) -> Any:
        if got[0] != code or (check is not None and not check(got[1])):
            problems.append(f"thread {i}: {what} answered {got}")
        return got[1]

    if i % 4 == 0:  # some threads wait for the outputs of a short countdown meanwhile
        expect(
            "launch countdown",
            http.post("/launch", {"class": COUNTDOWN, "inputs": {"start": 3, "delay": 0.01}}),
            200,
            lambda b: b["outputs"]["liftoff"] is True and b["outputs"]["steps"] == 3,
        )
    answer = expect("launch", http.post("/launch", {"class": WAITER, "inputs": {"seconds": 600}, "nowait": True}), 200)
    pid = answer.get("pid") if isinstance(answer, dict) else None
    if pid is None:
        return problems
    uuid.UUID(pid)
    expect(
        "status",
        http.get(f"/status/{pid}"),
        200,
        lambda b: b["pid"] == pid and b["class"] == WAITER and b["state_name"] in ("created", "running", "waiting"),
    )
    expect(
        "pause", http.post(f"/pause/{pid}", {"message": f"hold {i}"}), 200, lambda b: b == {"pid": pid, "paused": True}
    )
    expect(
        "paused status", http.get(f"/status/{pid}"), 200, lambda b: b["paused"] is True and b["status"] == f"hold {i}"
    )
    expect("play", http.post(f"/play/{pid}"), 200, lambda b: b == {"pid": pid, "played": True})
    expect("played status", http.get(f"/status/{pid}"), 200, lambda b: b["paused"] is False)
    expect("kill", http.post(f"/kill/{pid}", {"message": "done"}), 200, lambda b: b == {"pid": pid, "killed": True})
    after = http.get(f"/status/{pid}")
    # a killed process has ended: unreachable, or (if asked before its route is gone) reported killed
    if not (
        (after[0] == 404 and after[1]["error"] == "ProcessUnreachable")
        or (after[0] == 200 and after[1]["state_name"] == "killed")
    ):
        problems.append(f"thread {i}: status after kill answered {after}")
    return problems


def start_service(background: Any, *args: str, env: dict[str, str] | None = None) -> tuple[Background, Http]:
    service = background("examples/threaded_service.py", "--port", "0", *args, env=env)
    port = int(service.wait_for(r"listening on (\d+)").group(1))
    return service, Http(port)


def test_threaded_service_concurrent_requests(background: Any) -> None:
    service, http = start_service(background)  # the embedded default: no broker
    assert "embedded default" in service.output

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        problems = [p for ps in pool.map(lambda i: lifecycle(http, i), range(16), timeout=TIMEOUT) for p in ps]
    assert problems == []

    code, body = http.get(f"/status/{uuid.uuid4()}")
    assert code == 404 and body["error"] == "ProcessUnreachable" and "not reachable" in body["message"]
    code, body = http.post("/launch", {"class": "os:system", "inputs": {}})
    assert code == 400 and body["error"] == "LoadError" and "not allowed" in body["message"]
    code, body = http.post("/launch", {"class": "not-a-class-name"})
    assert code == 400 and body["error"] == "LoadError"
    code, body = http.post("/launch", {"class": "examples.processes:Nope"})  # allowed module, no such class
    assert code == 400 and body["error"] in ("LoadError", "TaskRejected") and "Nope" in body["message"]
    code, body = http.post("/launch", raw=b"{not json")
    assert code == 400 and body["error"] == "BadRequest"
    code, body = http.post("/launch", {"class": COUNTDOWN, "inputs": "three"})
    assert code == 400 and body["error"] == "BadRequest"
    code, body = http.get("/status/a*b")
    assert code == 400 and body["error"] == "InvalidPid"
    code, body = http.post("/launch?timeout=0.5", {"class": WAITER, "inputs": {"seconds": 1}})
    assert code == 504 and body["error"] == "TimeoutError"
    code, body = http.get("/status/x?timeout=soon")
    assert code == 400 and body["error"] == "BadRequest"
    code, body = http.get("/nowhere")
    assert code == 404 and body["error"] == "NotFound"

    assert service.stop(signal.SIGTERM) == 0
    assert "service stopped" in service.output


def test_threaded_service_on_the_broker(broker_url: str, prefix: str, background: Any) -> None:
    service, http = start_service(background, "--broker", broker_url, "--prefix", prefix, "--with-worker")
    assert "guest:***@" in service.output  # the password is masked
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        problems = [p for ps in pool.map(lambda i: lifecycle(http, i), range(4), timeout=TIMEOUT) for p in ps]
    assert problems == []
    code, body = http.get(f"/status/{uuid.uuid4()}")
    assert code == 404 and body["error"] == "ProcessUnreachable"
    assert service.stop(signal.SIGINT) == 0
