"""Process records over the real broker (issue 14): two workers in their own OS processes share one SQLite
store; a second client that launched nothing asks about finished, excepted, killed, parked, live and
never-seen pids, and each gets its own answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.client.records import NO_RECORDS_WORKER
from tests.faults._support import Workers, controller, prefix  # noqa: F401 (fixture)
from tests.procs import Add, Fails, Steps, Waiter
from tests.waiting import wait_until

T = 20.0


@pytest.fixture
def fleet(prefix: str, tmp_path: Path) -> Iterator[Workers]:  # noqa: F811
    made = Workers(prefix, tmp_path)
    made()
    made()
    yield made
    made.close()


@pytest.fixture
def pids(fleet: Workers, prefix: str) -> Iterator[dict[str, Any]]:  # noqa: F811
    """One process of each kind, launched by a first client (closed before the second one asks)."""
    with controller(prefix) as ctl:
        finished = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=True).result(T)
        excepted = ctl.launch_process(Fails, init_kwargs={"inputs": {}}, nowait=True).result(T)
        killed = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        live = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        parked = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 10_000, "delay": 0.01}}, persist=True, nowait=True
        ).result(T)
        wait_until(lambda: ctl.get_status(parked).result(T)["progress"].get("done", 0) >= 2, T, "steps")
        assert ctl.pause_process(parked, "parked for the night", release=True).result(T) is True
        assert ctl.kill_process(killed, "not needed").result(T) is True
        assert ctl.wait_for_process(finished, timeout=T, poll_interval=0.1).result(T) == "finished"
        assert ctl.wait_for_process(excepted, timeout=T, poll_interval=0.1).result(T) == "excepted"
    yield {"finished": finished, "excepted": excepted, "killed": killed, "parked": parked, "live": live}


def test_each_kind_of_pid_gets_its_own_answer(pids: dict[str, Any], fleet: Workers, prefix: str) -> None:  # noqa: F811
    never = uuid.uuid4()
    with controller(prefix) as ctl:  # a second client: it launched nothing
        finished = ctl.get_status(pids["finished"]).result(T)
        assert finished["state_name"] == "finished" and finished["outputs"] == {"sum": 3}
        assert finished["record"] is True and finished["live"] is False
        excepted = ctl.get_status(pids["excepted"]).result(T)
        assert excepted["state_name"] == "excepted"
        assert excepted["exception"]["type"] == "ValueError"
        assert "this process always fails" in excepted["exception"]["traceback"]
        killed = ctl.get_status(pids["killed"]).result(T)
        assert killed["state_name"] == "killed" and killed["status"] == "not needed"
        parked = ctl.get_status(pids["parked"]).result(T)
        assert parked["paused"] is True and parked["live"] is False and parked["status"] == "parked for the night"
        live = ctl.get_status(pids["live"]).result(T)
        assert live["state_name"] == "waiting" and "record" not in live  # the process itself answered
        with pytest.raises(process_comms.ProcessUnreachable, match="no record"):
            ctl.get_status(never).result(T)

        for kind in ("finished", "excepted", "killed"):  # an ended pid resolves at once
            assert ctl.wait_for_process(pids[kind], timeout=T).result(T) == kind
        with pytest.raises(process_comms.ProcessUnreachable, match="parked"):
            ctl.wait_for_process(pids["parked"], timeout=T).result(T)
        with pytest.raises(process_comms.ProcessUnreachable, match="no record"):
            ctl.wait_for_process(never, timeout=T).result(T)
        # a pause or play of an ended pid gets what the process answered while it was held: not "unreachable"
        assert ctl.pause_process(pids["finished"]).result(T) is False
        assert ctl.play_process(pids["excepted"]).result(T) is True
        with pytest.raises(process_comms.ProcessUnreachable):
            ctl.pause_process(never).result(T)

        record = ctl.get_process(pids["excepted"]).result(T)
        assert record["class"] == "tests.procs:Fails" and record["persisted"] is False
        assert [h["event"] for h in record["history"]] == ["created", "running", "excepted"]
        assert record["host"]["pid"] in {worker.proc.pid for worker in fleet.started}  # the worker's OS pid
        parked_record = ctl.get_process(pids["parked"]).result(T)
        assert "released" in [h["event"] for h in parked_record["history"]]
        with pytest.raises(process_comms.ProcessUnreachable, match="no record"):
            ctl.get_process(never).result(T)

        assert ctl.get_outputs(pids["finished"]).result(T) == {"sum": 3}  # of a nowait launch
        with pytest.raises(process_comms.RemoteError) as failed:
            ctl.get_outputs(pids["excepted"]).result(T)
        assert "this process always fails" in str(failed.value.remote_traceback)
        with pytest.raises(process_comms.ProcessKilled):
            ctl.get_outputs(pids["killed"]).result(T)

        listed = {str(row["pid"]): row for row in ctl.list_processes().result(T)}
        assert {k: listed[str(pid)]["state_name"] for k, pid in pids.items()} == {
            "finished": "finished",
            "excepted": "excepted",
            "killed": "killed",
            "parked": parked["state_name"],
            "live": "waiting",
        }
        assert listed[str(pids["live"])]["live"] is True and listed[str(pids["parked"])]["live"] is False
        ctimes = [row["ctime"] for row in ctl.list_processes().result(T)]
        assert ctimes == sorted(ctimes, reverse=True)
        assert [str(r["pid"]) for r in ctl.list_processes(state="excepted").result(T)] == [str(pids["excepted"])]
        assert len(ctl.list_processes(limit=2).result(T)) == 2

        # a parked process no worker runs can be killed for good: its record says so
        assert ctl.kill_process(pids["parked"], "cancelled").result(T) is True
        assert ctl.get_status(pids["parked"]).result(T)["state_name"] == "killed"
        with pytest.raises(process_comms.ProcessUnreachable, match="cannot be continued: KilledError: cancelled"):
            ctl.play_process(pids["parked"], resume=True).result(T)  # no worker continues it
        assert ctl.kill_process(pids["live"]).result(T) is True


def test_a_failed_launch_carries_the_remote_traceback(fleet: Workers, prefix: str) -> None:  # noqa: F811
    with controller(prefix) as ctl, pytest.raises(process_comms.RemoteError) as info:
        ctl.launch_process(Fails, init_kwargs={"inputs": {}}).result(T)
    assert info.value.remote_type == "ValueError"
    assert 'raise ValueError("this process always fails")' in str(info.value.remote_traceback)


def test_with_no_worker_up_the_records_query_says_so(prefix: str) -> None:  # noqa: F811
    with controller(prefix) as ctl:
        with pytest.raises(process_comms.ProcessUnreachable, match=NO_RECORDS_WORKER):
            ctl.list_processes().result(T)
        with pytest.raises(process_comms.ProcessUnreachable, match=NO_RECORDS_WORKER):
            ctl.get_status(uuid.uuid4()).result(T)
