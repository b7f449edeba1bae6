"""``process-comms dashboard`` as an operator exposes it: off loopback the token guards reads too (a read-only token
may read, not act; the page logs in for an HttpOnly cookie); request bodies are bounded in bytes and depth; no
worker up is a 503; the listing filters by several states, label and sort, and its rows carry the error. Over HTTP
(and raw sockets for what a hostile client sends) against the real command, a real CLI worker and the real broker.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cli.test_commands import _env, _global_options
from tests.dashboard.test_api import PROCS, RECORDS_PROCS, WAIT, Fleet, Served, fleet  # noqa: F401 (fixture)
from tests.waiting import wait_until

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from process_comms.dashboard._body import MAX_BODY_BYTES, MAX_BODY_DEPTH, json_depth  # noqa: E402

TOKEN = "act-t0ken-never-shown"
READ_TOKEN = "read-t0ken-never-shown"


@pytest.fixture(scope="module")
def exposed(fleet: Fleet, broker_url: str) -> Iterator[tuple[Served, str]]:  # noqa: F811
    """A dashboard bound to 0.0.0.0 with both tokens (from the environment: never on a command line), and its
    loopback URL."""
    args = [*_global_options(broker_url, fleet.names), "--timeout", "10", "dashboard", "--port", "0"]
    env = _env(PROCESS_COMMS_DASHBOARD_TOKEN=TOKEN, PROCESS_COMMS_DASHBOARD_READ_TOKEN=READ_TOKEN)
    board = Served([*args, "--host", "0.0.0.0"], fleet.tmp / "exposed.err", "dashboard ready at http://0.0.0.0:", env)
    try:
        yield board, board.url.replace("0.0.0.0", "127.0.0.1")
        assert board.stop() == 0, board.err_path.read_text()
    finally:
        board.close()
    errors = board.err_path.read_text()
    assert TOKEN not in errors and READ_TOKEN not in errors and "Traceback" not in errors


def test_off_loopback_every_read_needs_a_token_and_the_read_token_cannot_act(
    fleet: Fleet,  # noqa: F811
    exposed: tuple[Served, str],
) -> None:
    _, url = exposed
    broken = fleet.launch(f"{RECORDS_PROCS}:Broken")
    assert fleet.controller.wait_for_process(uuid.UUID(broken), WAIT).result(WAIT + 2) == "excepted"
    reads = ["/api/info", "/api/processes", f"/api/processes/{broken}", "/api/queues", "/metrics", "/api/events"]
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        for path in reads:
            bare = client.get(path)
            assert bare.status_code == 401, (path, bare.text)
            assert bare.json()["error_type"] == "Unauthorized" and "traceback" not in bare.text.lower()
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
        assert client.get("/").status_code == 200  # the page itself holds no record: it shows the login form

        reader = {"Authorization": f"Bearer {READ_TOKEN}"}
        record = client.get(f"/api/processes/{broken}", headers=reader)
        assert record.status_code == 200 and record.json()["exception"]["type"] == "ZeroDivisionError"
        assert client.get("/api/info", headers=reader).json()["role"] == "read"
        with client.stream("GET", "/api/events", headers=reader) as stream:
            assert stream.status_code == 200 and next(stream.iter_lines()) == "event: hello"
        denied = client.post(f"/api/processes/{broken}/kill", headers=reader)
        assert denied.status_code == 403 and "read-only" in denied.json()["error"]

        actor = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/processes", headers=actor).status_code == 200
        unknown = client.post(f"/api/processes/{uuid.uuid4()}/kill", headers=actor)
        assert unknown.status_code == 404 and unknown.json()["error_type"] == "ProcessUnreachable"


def test_the_page_logs_in_for_an_httponly_strict_cookie_that_holds_no_token(
    exposed: tuple[Served, str],
) -> None:
    _, url = exposed
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        assert client.post("/api/login", json={"token": "nope"}).status_code == 401
        forged = client.post("/api/login", json={"token": READ_TOKEN}, headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403 and not forged.headers.get("set-cookie")
        answer = client.post("/api/login", json={"token": READ_TOKEN})
        assert answer.status_code == 200 and answer.json() == {"role": "read"}
        cookie = answer.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        assert READ_TOKEN not in cookie and TOKEN not in cookie
        assert client.get("/api/processes").status_code == 200  # the cookie now carries the role
        assert client.post(f"/api/processes/{uuid.uuid4()}/pause").status_code == 403
        forged_cookie = {"pc_session": "act." + "0" * 64}
        with httpx.Client(base_url=url, timeout=WAIT, cookies=forged_cookie) as other:
            assert other.get("/api/processes").status_code == 401
        assert client.post("/api/logout").status_code == 200
        assert client.get("/api/processes").status_code == 401


# -- bodies ------------------------------------------------------------------------------------------
def _raw_post(url: str, path: str, head: dict[str, str], parts: Iterator[bytes]) -> tuple[int, dict[str, Any]]:
    """POST through a raw socket (what a hostile client sends): the headers, then ``parts`` as far as the server
    reads them; the status and JSON body of the answer (bounded by ``WAIT``)."""
    host, _, port = url.rpartition("/")[2].partition(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", *map(": ".join, head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before all was sent: the answer is read below
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    header, _, body = answer.partition(b"\r\n\r\n")
    status = int(header.split()[1])
    text = body.decode()
    if "transfer-encoding: chunked" in header.decode().lower():  # the JSON is the first chunk
        text = text.split("\r\n", 1)[1].rsplit("\r\n0", 1)[0].strip()
    return status, json.loads(text[: text.rindex("}") + 1])


def test_a_body_over_the_limit_is_refused_before_it_is_read(fleet: Fleet) -> None:  # noqa: F811
    pid = str(uuid.uuid4())
    declared = 64 * 1024 * 1024
    # declares 64 MiB, sends 4 KiB: the answer comes without the rest (the old code waited to read it all)
    status, body = _raw_post(
        fleet.dashboard.url,
        f"/api/processes/{pid}/kill",
        {"Content-Type": "application/json", "Content-Length": str(declared)},
        iter([b" " * 4096]),
    )
    assert (status, body["error_type"]) == (400, "BadRequest") and str(MAX_BODY_BYTES) in body["error"]
    # a chunked body declares no length: reading stops past the limit (the body never ends; the old code waited)
    chunk = b" " * 8192
    chunks = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1))
    status, body = _raw_post(
        fleet.dashboard.url,
        f"/api/processes/{pid}/kill",
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        chunks,
    )
    assert (status, body["error_type"]) == (400, "BadRequest") and "over" in body["error"]
    # a body just under the limit is read and taken
    fits = json.dumps({"message": "x" * (MAX_BODY_BYTES - 100)})
    answer = fleet.client.post(f"/api/processes/{pid}/kill", content=fits)
    assert answer.status_code == 404 and answer.json()["error_type"] == "ProcessUnreachable"


def test_deeply_nested_json_is_a_400_not_a_500(fleet: Fleet) -> None:  # noqa: F811
    pid = str(uuid.uuid4())
    for deep in ("[" * 50_000, '{"message": ' + "[" * (MAX_BODY_DEPTH + 1) + "]" * (MAX_BODY_DEPTH + 1) + "}"):
        response = fleet.client.post(f"/api/processes/{pid}/kill", content=deep)
        assert response.status_code == 400, response.text
        assert response.json()["error_type"] == "BadRequest" and "deeper than" in response.json()["error"]
    brackets_in_text = json.dumps({"message": "[" * 1000})  # brackets inside a string do not nest
    assert fleet.client.post(f"/api/processes/{pid}/pause", content=brackets_in_text).status_code == 404


def test_json_depth_counts_only_structure() -> None:
    assert json_depth(b'{"a": [1, {"b": []}]}', 16) == 4
    assert json_depth(b'{"a": "[[[[\\"[["}', 16) == 1
    assert json_depth(b"[" * 100, 16) == 17  # stops counting past the limit


# -- the listing ---------------------------------------------------------------------------------------
def test_excepted_rows_carry_their_error_in_the_listing(fleet: Fleet) -> None:  # noqa: F811
    broken = fleet.launch(f"{RECORDS_PROCS}:Broken")
    quick = fleet.launch(f"{PROCS}:Stepper", n=1, delay=0.0)
    for pid, state in ((broken, "excepted"), (quick, "finished")):
        assert fleet.controller.wait_for_process(uuid.UUID(pid), WAIT).result(WAIT + 2) == state
    rows = {row["pid"]: row for row in fleet.client.get("/api/processes").json()["processes"]}
    assert rows[broken]["error"] == "ZeroDivisionError: division by zero"
    assert rows[quick]["error"] is None


def test_bad_list_flags_are_400(fleet: Fleet) -> None:  # noqa: F811
    for bad, kind in (
        ({"active": "maybe"}, "BadRequest"),
        ({"reverse": "2"}, "BadRequest"),
        ({"sort": "x"}, "InvalidTask"),
    ):
        response = fleet.client.get("/api/processes", params=bad)
        assert response.status_code == 400 and response.json()["error_type"] == kind, bad


def test_the_listing_filters_by_several_states_and_a_label_and_sorts(fleet: Fleet) -> None:  # noqa: F811
    tag = f"nightly-{uuid.uuid4().hex[:8]}"

    def launch(cls: str, label: str | None, **inputs: Any) -> str:
        kwargs = {"inputs": inputs}
        return str(fleet.controller.launch_process(cls, init_kwargs=kwargs, nowait=True, label=label).result(WAIT))

    done = launch(f"{PROCS}:Stepper", f"{tag}-a", n=1, delay=0.0)
    held = launch(f"{PROCS}:Holder", f"{tag}-b")
    broken = launch(f"{RECORDS_PROCS}:Broken", f"{tag}-c")
    unlabelled = launch(f"{PROCS}:Holder", None)
    for pid, state in ((done, "finished"), (broken, "excepted")):
        assert fleet.controller.wait_for_process(uuid.UUID(pid), WAIT).result(WAIT + 2) == state
    wait_until(lambda: fleet.record(held)["state_name"] == "waiting", WAIT, "the holder to wait")

    def pids(**params: Any) -> list[str]:
        response = fleet.client.get("/api/processes", params=params)
        assert response.status_code == 200, response.text
        return [row["pid"] for row in response.json()["processes"]]

    assert pids(label=tag) == [broken, held, done]  # newest first
    labels = {row["pid"]: row["label"] for row in fleet.client.get("/api/processes").json()["processes"]}
    assert labels[held] == f"{tag}-b" and labels[unlabelled] is None
    assert pids(label=tag, state=["finished", "excepted"]) == [broken, done]
    assert pids(label=tag, active="1") == [held]
    assert pids(label=tag, sort="label") == [done, held, broken]
    assert pids(label=tag, sort="label", reverse="true") == [broken, held, done]
    assert pids(label=tag, sort="state") == [broken, done, held]  # excepted, finished, waiting
    assert pids(label=tag, offset=1, limit=1) == [held]
    for pid in (held, unlabelled):
        assert fleet.client.post(f"/api/processes/{pid}/kill").status_code == 200


def test_which_reads_need_a_token_and_the_read_token_rules() -> None:
    from process_comms.dashboard import DashboardError, DashboardSettings

    url = "amqp://u:p@h/"
    assert not DashboardSettings(url).check().reads_need_token  # loopback, no token: open, as before
    assert not DashboardSettings(url, token="t").check().reads_need_token  # loopback: only actions need it
    assert DashboardSettings(url, token="t", read_token="r").check().reads_need_token
    assert DashboardSettings(url, host="0.0.0.0", token="t").check().reads_need_token
    with pytest.raises(DashboardError, match="needs the full one"):
        DashboardSettings(url, read_token="r").check()
    with pytest.raises(DashboardError, match="must differ"):
        DashboardSettings(url, token="same", read_token="same").check()
