"""``process-comms dashboard`` (issue 18): its HTTP API, event stream, ``/metrics`` and safety, driven over HTTP
against the real command, a real CLI worker in its own OS process and the real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.cli import main as cli
from tests.cli.test_commands import (
    CLI,
    READY_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    LineReader,
    _env,
    _global_options,
    _one_line_error,
)
from tests.conftest import broker_url_as, delete_broker_objects
from tests.waiting import wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
parser = pytest.importorskip("prometheus_client.parser")

PROCS = "tests.dashboard.procs"
RECORDS_PROCS = "tests.worker.records_procs"
#: Seconds any one wait of these tests may take.
WAIT = 20.0


def unique_names() -> tuple[str, dict[str, str]]:
    """A prefix and the exchange and queue names under it (deleted with ``delete_broker_objects``)."""
    prefix = f"pc-test-dash-{uuid.uuid4().hex[:10]}"
    return prefix, {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


class Served:
    """A ``process-comms`` subprocess whose first line of output says it is ready; stopped by SIGTERM."""

    def __init__(self, args: list[str], err_path: Path, ready: str, env: dict[str, str] | None = None) -> None:
        self.err_path = err_path
        with open(err_path, "w") as err:
            self.proc = subprocess.Popen(
                [*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=env or _env()
            )
        assert self.proc.stdout is not None
        self.line = LineReader(self.proc.stdout).next(READY_TIMEOUT) or ""
        if not self.line.startswith(ready):
            self.close()
            pytest.fail(f"{args[-1]!r} said {self.line!r}; stderr: {err_path.read_text()}")

    @property
    def url(self) -> str:
        """The address a dashboard printed (``dashboard ready at URL``), without the trailing slash."""
        return self.line.rpartition(" at ")[2].rstrip("/")

    def stop(self) -> int:
        """SIGTERM, and the exit code (bounded)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def start_worker(broker_url: str, names: dict[str, str], tmp: Path) -> Served:
    """A CLI worker allowed to run the dashboard's and the record tests' processes."""
    args = [*_global_options(broker_url, names), "worker", "--persister", f"sqlite:///{tmp}/w.db"]
    return Served([*args, "--allow", PROCS, "--allow", RECORDS_PROCS], tmp / "worker.err", "worker ready")


def start_dashboard(
    broker_url: str, names: dict[str, str], tmp: Path, *extra: str, env: dict[str, str] | None = None
) -> Served:
    """``process-comms dashboard --port 0`` on the test's names."""
    args = [*_global_options(broker_url, names), "--timeout", "10", "dashboard", "--port", "0", *extra]
    return Served(args, tmp / f"dashboard-{uuid.uuid4().hex[:6]}.err", "dashboard ready at http://127.0.0.1:", env)


@dataclass
class Fleet:
    """A worker, a dashboard and a controller on one installation's names."""

    names: dict[str, str]
    worker: Served
    dashboard: Served
    controller: process_comms.RemoteProcessThreadController
    client: Any  # httpx.Client on the dashboard
    tmp: Path

    def launch(self, cls: str, **inputs: Any) -> str:
        """Launch ``cls`` (``module:Name``) with ``nowait``; its pid as text."""
        pid = self.controller.launch_process(cls, init_kwargs={"inputs": inputs}, nowait=True).result(WAIT)
        return str(pid)

    def record(self, pid: str) -> dict[str, Any]:
        response = self.client.get(f"/api/processes/{pid}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture(scope="module")
def fleet(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One worker and one dashboard for this module's tests (each test tells its processes by pid)."""
    prefix, names = unique_names()
    tmp = tmp_path_factory.mktemp("dashboard")
    worker = start_worker(broker_url, names, tmp)
    dashboard = comm = client = None
    try:
        dashboard = start_dashboard(broker_url, names, tmp)
        comm = process_comms.connect(broker_url, **names)
        client = httpx.Client(base_url=dashboard.url, timeout=WAIT)
        yield Fleet(names, worker, dashboard, process_comms.RemoteProcessThreadController(comm), client, tmp)
        assert dashboard.stop() == 0, dashboard.err_path.read_text()
        assert worker.stop() == 0, worker.err_path.read_text()
        assert "Traceback" not in dashboard.err_path.read_text()
    finally:
        if client is not None:
            client.close()
        if comm is not None:
            comm.close()
        for served in (dashboard, worker):
            if served is not None:
                served.close()
        delete_broker_objects(prefix)


# -- reads -------------------------------------------------------------------------------------------
def test_processes_are_listed_newest_first_filtered_and_paged(fleet: Fleet) -> None:
    adds = [fleet.launch(f"{PROCS}:Stepper", n=1, delay=0.0) for _ in range(3)]
    for pid in adds:
        assert fleet.controller.wait_for_process(uuid.UUID(pid), WAIT).result(WAIT + 2) == "finished"
    holder = fleet.launch(f"{PROCS}:Holder")
    wait_until(lambda: fleet.record(holder)["state_name"] == "waiting", WAIT, "the holder to wait")

    listing = fleet.client.get("/api/processes").json()
    mine = [row for row in listing["processes"] if row["pid"] in {*adds, holder}]
    assert [row["pid"] for row in mine] == [holder, *reversed(adds)]  # newest first
    held = mine[0]
    assert held["class"] == f"{PROCS}:Holder" and held["state_name"] == "waiting" and held["live"] is True
    assert held["progress"] == {"done": 1, "of": 4} and held["host"]["hostname"]
    assert {row["state_name"] for row in mine[1:]} == {"finished"}

    finished = fleet.client.get("/api/processes", params={"state": "finished", "class": f"{PROCS}:Stepper"}).json()
    assert set(adds) <= {row["pid"] for row in finished["processes"]}
    assert {row["state_name"] for row in finished["processes"]} == {"finished"}
    assert {row["class"] for row in finished["processes"]} == {f"{PROCS}:Stepper"}

    total = len(listing["processes"])
    pages, offset = [], 0
    while True:
        page = fleet.client.get("/api/processes", params={"limit": 2, "offset": offset}).json()
        assert page["limit"] == 2 and page["offset"] == offset and len(page["processes"]) <= 2
        pages += [row["pid"] for row in page["processes"]]
        if not page["has_more"]:
            break
        offset += 2
    assert len(pages) >= total and set(row["pid"] for row in listing["processes"]) <= set(pages)
    assert len(pages) == len(set(pages))  # no row on two pages

    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"offset": "9999", "limit": "100"}, {"since": "y"}):
        response = fleet.client.get("/api/processes", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error_type"] == "BadRequest"
    fleet.client.post(f"/api/processes/{holder}/kill")


def test_one_record_has_its_history_log_outputs_and_traceback(fleet: Fleet) -> None:
    stepper = fleet.launch(f"{PROCS}:Stepper", n=2, delay=0.0)
    broken = fleet.launch(f"{RECORDS_PROCS}:Broken")
    assert fleet.controller.wait_for_process(uuid.UUID(stepper), WAIT).result(WAIT + 2) == "finished"
    assert fleet.controller.wait_for_process(uuid.UUID(broken), WAIT).result(WAIT + 2) == "excepted"

    record = fleet.record(stepper)
    assert record["pid"] == stepper and record["outputs"] == {"steps": 2} and record["inputs"] == {"n": 2, "delay": 0.0}
    events = [entry["event"] for entry in record["history"]]
    assert events[0] == "created" and events[-1] == "finished" and "running" in events
    assert all(isinstance(entry["time"], float) for entry in record["history"])
    assert [line["text"] for line in record["log"]] == ["counting 2 steps"]

    failed = fleet.record(broken)
    assert failed["state_name"] == "excepted"
    assert failed["exception"]["type"] == "ZeroDivisionError" and "1 / 0" in failed["exception"]["traceback"]

    missing = fleet.client.get(f"/api/processes/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["error_type"] == "ProcessUnreachable"
    assert "no record" in missing.json()["error"]
    nowhere = fleet.client.get("/api/nothing-here")
    assert nowhere.status_code == 404 and nowhere.json()["error_type"] == "NotFound"


def test_queues_show_the_task_queue_and_its_worker(fleet: Fleet) -> None:
    answer = fleet.client.get("/api/queues").json()
    assert answer["queues"] == [{"queue": fleet.names["task_queue"], "exists": True, "messages": 0, "consumers": 1}]
    workers = answer["workers"]
    assert workers["available"] is True and len(workers["rows"]) == 1, workers
    [one] = workers["rows"]
    assert one["pid"] == fleet.worker.proc.pid and one["consuming"] is True, one
    assert all({"used", "total"} <= set(use) for use in one["slots"].values()) and one["slots"], one
    info = fleet.client.get("/api/info").json()
    assert info["task_queue"] == fleet.names["task_queue"] and info["actions_need_token"] is False
    page = fleet.client.get("/")
    assert page.status_code == 200 and "process-comms dashboard" in page.text
    assert fleet.client.get("/static/app.js").status_code == 200


# -- actions -----------------------------------------------------------------------------------------
def test_pause_play_and_kill_answer_and_take_effect(fleet: Fleet) -> None:
    pid = fleet.launch(f"{PROCS}:Holder")
    wait_until(lambda: fleet.record(pid)["state_name"] == "waiting", WAIT, "the holder to wait")

    paused = fleet.client.post(f"/api/processes/{pid}/pause", json={"message": "from the test"})
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"pid": pid, "action": "pause", "result": True}
    status = fleet.controller.get_status(uuid.UUID(pid)).result(WAIT)
    assert status["paused"] is True and status["status"] == "from the test"
    assert fleet.client.post(f"/api/processes/{pid}/play").json()["result"] is True
    assert fleet.controller.get_status(uuid.UUID(pid)).result(WAIT)["paused"] is False

    killed = fleet.client.post(f"/api/processes/{pid}/kill", json={"message": "enough"})
    assert killed.json() == {"pid": pid, "action": "kill", "result": True}
    assert fleet.controller.wait_for_process(uuid.UUID(pid), WAIT).result(WAIT + 2) == "killed"
    events = [entry["event"] for entry in fleet.record(pid)["history"]]
    assert "paused" in events and events[-1] == "killed"

    unknown = fleet.client.post(f"/api/processes/{uuid.uuid4()}/pause")
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "ProcessUnreachable"
    for body, kind in ((b"[1]", "BadRequest"), (b"{", "BadRequest"), (b'{"message": 3}', "BadRequest")):
        response = fleet.client.post(f"/api/processes/{pid}/kill", content=body)
        assert (response.status_code, response.json()["error_type"]) == (400, kind), body
    assert fleet.client.post(f"/api/processes/{pid}/kill", json={"force": "yes"}).status_code == 400
    nope = fleet.client.post(f"/api/processes/{pid}/explode")
    assert nope.status_code == 404 and nope.json()["error_type"] == "NotFound"
    assert fleet.client.get(f"/api/processes/{pid}/kill").status_code == 405  # actions are POSTs


def test_cross_site_posts_and_foreign_host_names_are_refused(fleet: Fleet) -> None:
    pid = str(uuid.uuid4())
    forged = fleet.client.post(f"/api/processes/{pid}/kill", headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and forged.json()["error_type"] == "Forbidden"
    same_site = fleet.client.post(f"/api/processes/{pid}/kill", headers={"Origin": fleet.dashboard.url})
    assert same_site.status_code == 404  # past the guard: the pid is unknown
    rebound = fleet.client.get("/api/info", headers={"Host": "evil.example"})
    assert rebound.status_code == 400  # bound to loopback: answers only to loopback names (DNS rebinding)


# -- live events and metrics ---------------------------------------------------------------------------
def _events(response: Any, deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` from an SSE response until ``deadline`` (each read is bounded by the client)."""
    name = None
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise AssertionError("the awaited events did not come in time")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name is not None:
            yield name, json.loads(line[len("data: ") :])
            name = None


def test_event_stream_pushes_state_changes_and_actions(fleet: Fleet) -> None:
    deadline = time.monotonic() + WAIT
    with fleet.client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response, deadline)
        assert next(events)[0] == "hello"
        pid = fleet.launch(f"{PROCS}:Holder")
        seen = []
        for name, data in events:
            if data.get("pid") == pid:
                seen.append((name, data.get("from"), data.get("to"), data.get("action"), data.get("result")))
                if data.get("to") == "waiting":
                    assert fleet.client.post(f"/api/processes/{pid}/kill").status_code == 200
                kinds = {(kind, to) for kind, _, to, _, _ in seen}
                if ("state", "killed") in kinds and ("action", None) in kinds:
                    break  # the action's answer and the final broadcast come in either order
    assert seen[0] == ("state", "None", "created", None, None)
    assert ("state", "running", "waiting", None, None) in seen
    assert ("state", "waiting", "killed", None, None) in seen
    assert ("action", None, None, "kill", True) in seen


def test_metrics_are_prometheus_text_that_its_parser_reads(fleet: Fleet) -> None:
    pid = fleet.launch(f"{PROCS}:Stepper", n=1, delay=0.0)
    assert fleet.controller.wait_for_process(uuid.UUID(pid), WAIT).result(WAIT + 2) == "finished"
    held = fleet.launch(f"{PROCS}:Holder")
    wait_until(lambda: fleet.record(held)["state_name"] == "waiting", WAIT, "the holder to wait")
    assert fleet.client.post(f"/api/processes/{held}/pause").status_code == 200
    assert fleet.client.post(f"/api/processes/{uuid.uuid4()}/play").status_code == 404

    response = fleet.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in parser.text_string_to_metric_families(response.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    by_state = {labels[0][1]: value for (name, labels), value in samples.items() if name == "process_comms_processes"}
    assert by_state.get("finished", 0) >= 1 and by_state.get("waiting", 0) >= 1
    assert samples[("process_comms_launches_total", ())] >= 2
    assert samples[("process_comms_state_changes_total", (("state", "finished"),))] >= 1
    ok_pause = (("action", "pause"), ("outcome", "ok"))
    assert samples[("process_comms_control_seconds_count", ok_pause)] >= 1
    assert (
        samples[("process_comms_control_seconds_count", (("action", "play"), ("outcome", "ProcessUnreachable")))] >= 1
    )
    assert samples[("process_comms_records_query_seconds_count", (("outcome", "ok"), ("query", "list")))] >= 1
    queue = (("queue", fleet.names["task_queue"]),)
    assert samples[("process_comms_task_queue_consumers", queue)] == 1
    assert samples[("process_comms_task_queue_messages", queue)] == 0
    assert samples[("process_comms_dashboard_source_up", (("source", "records"),))] == 1
    assert families["process_comms_control_seconds"].type == "histogram"
    slots = {dict(labels)["kind"] for (name, labels), _ in samples.items() if name == "process_comms_worker_slots"}
    assert "used" in slots
    fleet.client.post(f"/api/processes/{held}/kill")


# -- safe by default -----------------------------------------------------------------------------------
def test_a_token_guards_actions_and_not_reads(fleet: Fleet, broker_url: str) -> None:
    board = start_dashboard(broker_url, fleet.names, fleet.tmp, env=_env(PROCESS_COMMS_DASHBOARD_TOKEN="s3cr3t-t0ken"))
    try:
        with httpx.Client(base_url=board.url, timeout=WAIT) as client:
            assert client.get("/api/info").json()["actions_need_token"] is True
            assert client.get("/api/processes").status_code == 200
            pid = str(uuid.uuid4())
            bare = client.post(f"/api/processes/{pid}/kill")
            assert bare.status_code == 401 and bare.json()["error_type"] == "Unauthorized"
            assert bare.headers["www-authenticate"].startswith("Bearer")
            wrong = client.post(f"/api/processes/{pid}/kill", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = client.post(f"/api/processes/{pid}/kill", headers={"Authorization": "Bearer s3cr3t-t0ken"})
            assert right.status_code == 404 and right.json()["error_type"] == "ProcessUnreachable"
            assert "s3cr3t-t0ken" not in client.get("/").text + client.get("/api/info").text
    finally:
        assert board.stop() == 0
        board.close()


def test_listening_beyond_loopback_needs_a_token() -> None:
    result = subprocess.run(
        [*CLI, "--broker", "amqp://guest:guest@127.0.0.1:5672/", "dashboard", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env=_env(),
    )
    assert result.returncode == cli.EXIT_USAGE
    assert "without a token" in _one_line_error(result) and "--token" in result.stderr


def test_no_broker_password_in_pages_or_errors(fleet: Fleet, broker_url: str, tmp_path: Path) -> None:
    info = fleet.client.get("/api/info").json()
    assert info["broker"] == "amqp://guest:***@127.0.0.1:5672/"
    for path in ("/", "/api/info", "/api/queues", "/metrics"):
        assert "guest:guest@" not in fleet.client.get(path).text
    secret = "pw-that-must-not-show"
    url = broker_url_as("guest", secret)
    result = subprocess.run(
        [*CLI, "--broker", url, "--timeout", "5", "dashboard", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=ROOT,
        env=_env(),
    )
    assert result.returncode == cli.EXIT_BROKER, result.stderr
    assert secret not in result.stderr + result.stdout
    assert "guest:***@" in _one_line_error(result)


def test_sigterm_ends_open_event_streams_and_exits_0(fleet: Fleet, broker_url: str) -> None:
    board = start_dashboard(broker_url, fleet.names, fleet.tmp)
    try:
        with httpx.Client(base_url=board.url, timeout=WAIT) as client, client.stream("GET", "/api/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: hello"
            started = time.monotonic()
            board.proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # the server ends the stream: iteration stops (bounded by the read timeout)
            assert board.proc.wait(timeout=STOP_TIMEOUT) == 0
            assert time.monotonic() - started < STOP_TIMEOUT
            assert all(not line.startswith("event: state") for line in rest)
    finally:
        board.close()
    assert "Traceback" not in board.err_path.read_text()


# -- the settings, without a broker ------------------------------------------------------------------
def test_loopback_hosts_and_the_token_rule() -> None:
    from process_comms.dashboard import DashboardError, DashboardSettings, is_loopback

    assert all(is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.0.2.1", "example.org", ""))
    DashboardSettings("amqp://u:p@h/").check()
    DashboardSettings("amqp://u:p@h/", host="0.0.0.0", token="t").check()
    with pytest.raises(DashboardError, match="without a token"):
        DashboardSettings("amqp://u:p@h/", host="0.0.0.0").check()
    with pytest.raises(DashboardError, match="greater than 0"):
        DashboardSettings("amqp://u:p@h/", timeout=0).check()


def test_settings_scrub_every_broker_password() -> None:
    from process_comms.dashboard import DashboardSettings

    settings = DashboardSettings("amqp://alice:sec%40ret@a:5672/,amqp://bob:other@b:5672/v")
    assert settings.masked_broker == "amqp://alice:***@a:5672/,amqp://bob:***@b:5672/v"
    text = settings.scrub("failed: amqp://alice:sec%40ret@a:5672/ said sec@ret and other")
    assert "sec@ret" not in text and "sec%40ret" not in text and "other" not in text
    assert DashboardSettings("amqp://guest:guest@h/").scrub("amqp://guest:guest@h/") == "amqp://guest:***@h/"
