"""Labels and time limits on processes, and listings as people ask for them (process_comms/wire/launch_options.py,
process_comms/wire/listing.py): the bounds; a worker in this interpreter on the real broker for the controllers;
every store's ``list_records``; a time limit that a worker enforces after its launching client exited and after
the worker that held the process was SIGKILLed (workers and clients in their own OS processes)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from process_comms.errors import InvalidLaunchOption, InvalidTask
from process_comms.wire.launch_options import (
    LABEL_MAX_CHARS,
    LAUNCH_OPTIONS_KEY,
    check_time_limit,
    launch_options_of,
    with_launch_options,
)
from process_comms.wire.listing import ACTIVE_STATES, check_listing, sort_rows
from process_comms.wire.messages import create_launch_body
from process_comms.worker.persistence import InMemoryPersister, Persister
from tests.faults._support import ROOT, controller, prefix, workers
from tests.procs import Add, Waiter
from tests.waiting import wait_until
from tests.worker.test_persistence import persister, pg_table

__all__ = ["persister", "pg_table", "prefix", "workers"]  # fixtures

T = 30.0


def _history_kill_time(record: dict[str, Any]) -> float:
    return next(float(h["time"]) for h in record["history"] if h.get("event") == "killed")


def _killed_on_time(record: dict[str, Any], deadline: float, slack: float) -> float:
    """The time the record says the process was killed, checked against its deadline and reason."""
    assert record["state_name"] == "killed", record
    assert record["status"] == f"time limit of {record['time_limit']:g} s reached", record["status"]
    assert any(h.get("event") == "time limit" and "reached" in h.get("message", "") for h in record["history"])
    killed = _history_kill_time(record)
    assert deadline - 0.05 <= killed <= deadline + slack, (killed - deadline, record["history"])
    print(f"killed {killed - deadline:.3f} s after its deadline (time limit {record['time_limit']:g} s)")
    return killed


# -- the bounds (no broker) ----------------------------------------------------------------------------------------
def test_a_label_longer_than_the_bound_or_a_bad_time_limit_is_a_typed_error() -> None:
    assert with_launch_options({}, "x" * LABEL_MAX_CHARS) == {LAUNCH_OPTIONS_KEY: {"label": "x" * LABEL_MAX_CHARS}}
    with pytest.raises(InvalidLaunchOption, match=f"at most {LABEL_MAX_CHARS} characters"):
        with_launch_options({}, "x" * (LABEL_MAX_CHARS + 1))
    for bad in (0, -1, float("nan"), float("inf"), True, "30", 400 * 24 * 3600):
        with pytest.raises(InvalidLaunchOption):
            check_time_limit(bad)
    with pytest.raises(InvalidLaunchOption):  # what a hostile peer may put in a task
        launch_options_of({LAUNCH_OPTIONS_KEY: ["label"]})
    with pytest.raises(InvalidLaunchOption):
        launch_options_of({LAUNCH_OPTIONS_KEY: {"label": 5}})
    assert issubclass(InvalidLaunchOption, InvalidTask)


def test_a_launch_without_options_is_plumpys_body_and_options_stay_out_of_args() -> None:
    body = create_launch_body("tests.procs:Add", init_kwargs={"inputs": {}})
    assert with_launch_options(body) is body  # byte for byte what plumpy sends
    extended = with_launch_options(body, "nightly", 30)
    assert extended["args"] == body["args"] and extended[LAUNCH_OPTIONS_KEY] == {"label": "nightly", "time_limit": 30}


def test_listing_queries_are_checked_and_sorted_in_one_place() -> None:
    assert check_listing("running", ["waiting", "running"], None, None, False) == (
        ("running", "waiting"),
        None,
        "age",
        False,
    )
    for bad in ({"states": "running"}, {"sort": "size"}, {"reverse": "yes"}, {"label": "x" * 500}):
        with pytest.raises(InvalidTask):
            check_listing(None, bad.get("states"), bad.get("label"), bad.get("sort"), bad.get("reverse", False))
    rows = [
        {"pid": 1, "ctime": 1.0, "state_name": "running", "class": "b", "label": "z"},
        {"pid": 2, "ctime": 2.0, "state_name": "killed", "class": "a", "label": None},
        {"pid": 3, "ctime": 3.0, "state_name": "running", "class": "a", "label": "a"},
    ]
    assert [r["pid"] for r in sort_rows(rows, "age", False)] == [3, 2, 1]
    assert [r["pid"] for r in sort_rows(rows, "age", True)] == [1, 2, 3]
    assert [r["pid"] for r in sort_rows(rows, "state", False)] == [2, 3, 1]
    assert [r["pid"] for r in sort_rows(rows, "class", False)] == [3, 2, 1]
    assert [r["pid"] for r in sort_rows(rows, "label", False)] == [3, 1, 2]  # no label last


# -- every store ---------------------------------------------------------------------------------------------------
def test_every_store_lists_by_several_states_and_a_label_substring(persister: Persister) -> None:
    now = time.time()
    rows = [
        ("running", "night batch 1", now - 3),
        ("waiting", "night batch 2", now - 2),
        ("finished", "night batch 3", now - 1),
        ("running", None, now),
        ("waiting", "Night", now + 1),
    ]
    persister.save_records(
        [
            {"pid": i, "class": "m:C", "state_name": s, "label": label, "ctime": t, "mtime": t, "progress": {}}
            for i, (s, label, t) in enumerate(rows)
        ]
    )
    listed = persister.list_records(states=["running", "waiting"])
    assert [r["pid"] for r in listed] == [4, 3, 1, 0]
    assert [r["pid"] for r in persister.list_records(label="night")] == [2, 1, 0]  # case-sensitive substring
    assert [r["pid"] for r in persister.list_records(label="batch 2", states=list(ACTIVE_STATES))] == [1]
    assert [r["pid"] for r in persister.list_records(states=[])] == []
    assert persister.list_records(label="night", limit=1)[0]["label"] == "night batch 3"


# -- a worker in this interpreter -----------------------------------------------------------------------------------
@pytest.fixture
def fleet(broker_url: str, names: dict[str, str]) -> Iterator[process_comms.RemoteProcessThreadController]:
    worker = process_comms.Worker(broker_url, persister=InMemoryPersister(), allowed_modules=["tests"], **names).start()
    try:
        with process_comms.connect(broker_url, **names) as comm:
            yield process_comms.RemoteProcessThreadController(comm)
    finally:
        worker.stop()


def test_a_time_limit_kills_running_and_paused_processes_with_its_reason(
    fleet: process_comms.RemoteProcessThreadController,
) -> None:
    ctl, limit = fleet, 1.5
    started = time.time()
    limited = ctl.launch_process(Waiter, nowait=True, label="night batch", time_limit=limit).result(T)
    paused = ctl.launch_process(Waiter, nowait=True, label="night paused", time_limit=limit).result(T)
    assert ctl.pause_process(paused).result(T) is True
    free = ctl.launch_process(Waiter, nowait=True, label="day").result(T)
    assert ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, time_limit=60).result(T) == {"sum": 3}
    for pid in (limited, paused):
        assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.1).result(T + 5) == "killed"
        record = ctl.get_process(pid).result(T)
        assert record["label"] in ("night batch", "night paused")
        _killed_on_time(record, record["deadline"], slack=5.0)
        assert started + limit - 0.05 <= record["deadline"] <= time.time()
        status = ctl.get_status(pid).result(T)
        assert status["label"] == record["label"] and status["state_name"] == "killed"
    assert ctl.get_status(free).result(T)["state_name"] == "waiting"  # no limit: still there
    assert ctl.get_status(free).result(T)["label"] == "day"


def test_a_label_too_long_is_refused_before_anything_is_sent(
    fleet: process_comms.RemoteProcessThreadController,
) -> None:
    with pytest.raises(InvalidLaunchOption):
        fleet.launch_process(Waiter, nowait=True, label="x" * (LABEL_MAX_CHARS + 1)).result(T)
    with pytest.raises(InvalidLaunchOption):
        fleet.launch_process(Waiter, nowait=True, time_limit=-1).result(T)
    assert fleet.list_processes().result(T) == []


def test_list_by_states_active_label_and_sorts(fleet: process_comms.RemoteProcessThreadController) -> None:
    ctl = fleet
    for i in range(2):  # one after the other: newest first is "sum 1"
        ctl.launch_process(Add, init_kwargs={"inputs": {"a": i, "b": 0}}, label=f"sum {i}").result(T)
    waiting = ctl.launch_process(Waiter, nowait=True, label="b waiter").result(T)
    paused = ctl.launch_process(Waiter, nowait=True, label="a waiter").result(T)
    wait_until(lambda: len(ctl.list_processes(states=["waiting"]).result(T)) == 2, T, "both waiting")
    ctl.pause_process(paused).result(T)

    active = ctl.list_processes(states=list(ACTIVE_STATES)).result(T)
    assert {row["pid"] for row in active} == {waiting, paused}
    both = ctl.list_processes(states=["finished", "waiting"]).result(T)
    assert len(both) == 4
    assert [r["label"] for r in ctl.list_processes(label="waiter").result(T)] == ["a waiter", "b waiter"]
    assert [r["label"] for r in ctl.list_processes(label="waiter", sort="label").result(T)] == ["a waiter", "b waiter"]
    by_label = ctl.list_processes(sort="label", reverse=True).result(T)
    assert [r["label"] for r in by_label] == ["sum 1", "sum 0", "b waiter", "a waiter"]
    oldest_first = ctl.list_processes(reverse=True).result(T)
    assert [r["label"] for r in oldest_first][-2:] == ["b waiter", "a waiter"]
    by_state = ctl.list_processes(sort="state").result(T)
    assert [r["state_name"] for r in by_state] == ["finished", "finished", "waiting", "waiting"]
    page = ctl.list_processes_page(limit=1, sort="class").result(T)
    assert len(page["processes"]) == 1 and page["more"] is None  # an order other than age: one page, no cursor
    paged = ctl.list_processes_page(limit=1, states=["finished"]).result(T)
    assert paged["more"] is not None  # newest first keeps its cursor
    rest = ctl.list_processes_page(limit=5, states=["finished"], cursor=paged["more"]).result(T)
    assert [r["label"] for r in paged["processes"] + rest["processes"]] == ["sum 1", "sum 0"]
    with pytest.raises(InvalidTask):
        ctl.list_processes(sort="size").result(T)
    with pytest.raises(InvalidTask, match="a cursor pages only"):
        ctl.list_processes_page(sort="label", cursor=paged["more"]).result(T)


# -- workers and clients in their own OS processes -------------------------------------------------------------------
_LAUNCHER = """
import sys, process_comms
from tests.faults._support import controller
with controller(sys.argv[1]) as ctl:
    pid = ctl.launch_process(
        "tests.procs:Waiter", nowait=True, persist=sys.argv[2] == "persist", label="cron", time_limit=float(sys.argv[3])
    ).result(30)
print(pid)
"""


def _launch_from_a_subprocess(prefix: str, persist: bool, limit: float) -> uuid.UUID:
    """Launch a time-limited Waiter from a client in its own OS process, which then exits."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, prefix, "persist" if persist else "-", str(limit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return uuid.UUID(done.stdout.strip())


def _record(ctl: Any, pid: Any) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = ctl.get_process(pid).result(T)
    except process_comms.ProcessCommsError:
        return None
    return record


@pytest.mark.slow
def test_a_time_limit_holds_after_the_launching_client_exited(prefix: str, workers: Any) -> None:
    workers()
    limit = 3.0
    pid = _launch_from_a_subprocess(prefix, persist=False, limit=limit)  # the client is gone from here on
    with controller(prefix) as ctl:
        record = wait_until(lambda: (r := _record(ctl, pid)) and r["state_name"] == "killed" and r, 60, "the kill")
    assert record["label"] == "cron" and record["time_limit"] == limit
    _killed_on_time(record, record["deadline"], slack=5.0)
    assert record["deadline"] - record["ctime"] == pytest.approx(limit, abs=0.5)


@pytest.mark.slow
def test_a_time_limit_holds_across_a_takeover_at_its_original_deadline(prefix: str, workers: Any) -> None:
    fleet = ("--heartbeat", "2", "--claim-ttl", "30")  # as tests/worker/test_takeover.py: liveness makes it fast
    first = workers(*fleet)
    limit, held = 15.0, 4.0
    pid = _launch_from_a_subprocess(prefix, persist=True, limit=limit)
    with controller(prefix) as ctl:
        before = wait_until(lambda: (r := _record(ctl, pid)) and r["state_name"] == "waiting" and r, T, "it to wait")
        deadline = before["deadline"]
        second = workers(*fleet)
        # held long enough that a limit counted again from the takeover would end well past the deadline
        wait_until(lambda: time.time() > deadline - limit + held, T, f"{held} s of the limit to pass")
        first.sigkill()
        killed_at = time.time()
        assert killed_at < deadline - 4, "the takeover test needs the kill well before the deadline"
        record = wait_until(
            lambda: (r := _record(ctl, pid)) and r["state_name"] == "killed" and r, deadline - time.time() + 60, "kill"
        )
    assert record["deadline"] == deadline, "the worker that continued it kept its deadline"
    assert any(h.get("event") == "continued" for h in record["history"]), record["history"]
    assert record.get("worker") != before.get("worker"), "another worker ended it"
    assert second.proc.poll() is None
    # on time: a limit counted again by the second worker would have killed it at least `held` s late
    _killed_on_time(record, deadline, slack=held - 1.0)


def test_a_listing_read_from_the_store_filters_and_sorts_as_a_worker_does(
    broker_url: str, names: dict[str, str]
) -> None:
    """No worker up: the controller's store answers, with the same states, label and order."""
    store, now = InMemoryPersister(), time.time()
    labels = [("finished", "b nightly"), ("killed", "a nightly"), ("finished", "c weekly"), ("waiting", None)]
    store.save_records(
        [
            {"pid": i, "class": "m:C", "state_name": s, "label": label, "ctime": now + i, "mtime": now + i}
            for i, (s, label) in enumerate(labels)
        ]
    )
    with process_comms.connect(broker_url, **names) as comm:
        ctl = process_comms.RemoteProcessThreadController(comm, rpc_timeout=5.0, store=store)
        rows = ctl.list_processes(states=["finished", "killed"], label="nightly", sort="label").result(T)
        assert rows.source == "store" and [r["pid"] for r in rows] == [1, 0]
        rows = ctl.list_processes(state="finished", reverse=True).result(T)
        assert [r["pid"] for r in rows] == [0, 2]
        page = ctl.list_processes_page(states=["waiting", "killed"]).result(T)
        assert [r["pid"] for r in page["processes"]] == [3, 1] and page["more"] is None
