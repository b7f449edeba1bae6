"""A pid is used once, and a typo leaves no phantom (RELIABILITY.md, "A process's state is never a guess").

* A launch or create of a pid that already has a process (live, ended, checkpointed) is refused with
  ``DuplicatePid``; the first run's record is untouched. The same task delivered again (its worker died) is
  no new launch: it runs (worker/_pids.py).
* ``kill`` of a pid nobody knows keeps a *kill request*, capped and expiring, that ``list`` leaves out and
  ``show`` names; a task of that pid still queued is dropped (tests/worker/test_queued_kill.py).

Real broker; the CLI as subprocesses; a worker that dies in its own OS process.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms import RemoteProcessController, SqlPersister
from process_comms.cli import main as cli
from process_comms.wire.messages import KILL_REQUESTED
from process_comms.worker.persistence import InMemoryPersister
from tests.cli.test_commands import Run, rmq_cleanup, run  # noqa: F401 (fixtures)
from tests.cli.test_records import worker  # noqa: F401 (fixture)
from tests.conftest import BROKER_URL, rmq_options
from tests.faults._support import Workers, controller, prefix, workers  # noqa: F401 (fixtures)
from tests.procs import Add, Steps, Waiter
from tests.waiting import wait_until
from tests.worker.test_persistence import pg_table  # noqa: F401 (fixture)
from tests.worker.test_records_store import persister, record  # noqa: F401 (fixture)

T = 20.0


def _worker(names: dict[str, str], store: Any, **options: Any) -> process_comms.Worker:
    return process_comms.Worker(
        BROKER_URL, persister=store, allowed_modules=["tests.procs"], testing_mode=True, **names, **options
    ).start()


def _add(a: int, b: int, pid: Any) -> dict[str, Any]:
    return {"inputs": {"a": a, "b": b}, "pid": pid}


# -- a pid is used once ----------------------------------------------------------------------------------
def test_cli_launch_of_a_finished_pid_is_refused_and_its_record_is_unchanged(run: Run, worker: Path) -> None:  # noqa: F811
    pid = str(uuid.uuid4())
    first = run("--json", "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}', "--pid", pid)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"sum": 3}
    again = run("launch", "tests.procs:Add", "--inputs", '{"a": 5, "b": 5}', "--pid", pid)
    assert again.returncode == cli.EXIT_REJECTED, (again.stdout, again.stderr)
    assert again.stdout == ""
    assert again.stderr.startswith("process-comms: error: ") and len(again.stderr.splitlines()) == 1, again.stderr
    assert f"process {pid} already exists" in again.stderr and "a pid is used once" in again.stderr
    nowait = run("launch", "tests.procs:Add", "--inputs", '{"a": 5, "b": 5}', "--pid", pid, "--nowait")
    assert nowait.returncode == cli.EXIT_REJECTED, nowait.stderr
    shown = run("--json", "show", pid)
    assert shown.returncode == 0, shown.stderr
    [answer] = json.loads(shown.stdout)
    record = answer["result"]
    assert (record["inputs"], record["outputs"], record["state_name"]) == ({"a": 1, "b": 2}, {"sum": 3}, "finished")
    assert [h["event"] for h in record["history"]].count("finished") == 1


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
@pytest.mark.parametrize("store", ["sqlite", "memory", "records off"])
def test_both_controllers_refuse_a_used_pid_and_continue_still_works(
    names: dict[str, str], tmp_path: Path, store: str
) -> None:
    where: Any = InMemoryPersister() if store == "memory" else f"sqlite:///{tmp_path}/store.db"
    fleet = _worker(names, where, records=store != "records off")
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            pid = uuid.uuid4()
            # persisted (with records off, its checkpoint is the trace of the pid)
            assert ctl.launch_process(Add, init_kwargs=_add(1, 2, pid), persist=True).result(T) == {"sum": 3}
            again = ctl.launch_process(Add, init_kwargs=_add(5, 5, pid), persist=True)
            with pytest.raises(process_comms.DuplicatePid, match="a pid is used once") as raised:
                again.result(T)
            assert isinstance(raised.value, process_comms.TaskRejected)  # what kiwipy callers catch
            with pytest.raises(process_comms.DuplicatePid):
                ctl.launch_process(Add, init_kwargs=_add(5, 5, pid), nowait=True).result(T)
            with pytest.raises(process_comms.DuplicatePid):
                ctl.task_send(process_comms.create_create_body(Add, init_kwargs=_add(5, 5, pid), persist=True)).result(
                    T
                )
            # continue of the persisted pid is how it runs again: from its checkpoint, with its first outputs
            assert ctl.continue_process(pid).result(T) == {"sum": 3}
            # a pid that runs now is used too
            live = uuid.uuid4()
            assert ctl.launch_process(Waiter, init_kwargs={"inputs": {}, "pid": live}, nowait=True).result(T) == live
            with pytest.raises(process_comms.DuplicatePid):
                ctl.launch_process(Add, init_kwargs=_add(1, 1, live)).result(T)

            async def from_asyncio() -> None:
                async_comm = process_comms.RmqCommunicator(BROKER_URL, **rmq_options(names))
                await asyncio.wait_for(async_comm.connect(), T)
                try:
                    actl = RemoteProcessController(async_comm)
                    with pytest.raises(process_comms.DuplicatePid):
                        await asyncio.wait_for(actl.launch_process(Add, init_kwargs=_add(7, 7, pid)), T)
                    with pytest.raises(process_comms.DuplicatePid):
                        await asyncio.wait_for(actl.launch_process(Add, init_kwargs=_add(7, 7, live)), T)
                finally:
                    await asyncio.wait_for(async_comm.close(), T)

            asyncio.run(from_asyncio())
            assert ctl.kill_process(live).result(T) is True
            if store != "records off":
                record = ctl.get_process(pid).result(T)
                assert (record["inputs"], record["outputs"]) == ({"a": 1, "b": 2}, {"sum": 3})
                assert ctl.get_status(live).result(T)["state_name"] == "killed"  # the Waiter, not an Add
    finally:
        fleet.stop()


@pytest.mark.slow
def test_a_task_redelivered_after_its_worker_died_runs_but_a_new_launch_of_its_pid_is_refused(
    prefix: str,  # noqa: F811
    workers: Workers,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The same task seen twice is no new launch: its record names the task (its correlation id), so the
    worker that takes the redelivered task runs it again (not persisted: from the start, its history kept)."""
    log = tmp_path / "steps.log"
    first = workers()
    store = SqlPersister(workers.persister)
    ctl = controller(prefix)
    try:
        pid = uuid.uuid4()
        launch = ctl.launch_process(Steps, init_kwargs={"inputs": {"n": 3, "delay": 0.5, "log": str(log)}, "pid": pid})
        wait_until(lambda: log.exists() and log.read_text(), T, "the first step on the first worker")
        wait_until(lambda: store.load_record(pid), T, "the record of the first run")
        first.sigkill()
        workers()  # the broker redelivers the task to it
        assert launch.result(60) == {"steps": 3, "resumed_from": 0}
        record = ctl.get_process(pid).result(T)
        events = [h["event"] for h in record["history"]]
        assert events[0] == "created" and "continued" in events and events[-1] == "finished", events
        assert len({line.split()[2] for line in log.read_text().splitlines()}) == 2  # two worker OS processes
        with pytest.raises(process_comms.DuplicatePid):
            ctl.launch_process(Steps, init_kwargs={"inputs": {"n": 1}, "pid": pid}).result(T)
    finally:
        ctl.close()
        store.close()


@pytest.mark.slow
def test_two_persisted_launches_of_one_pid_on_two_workers_run_one_process(
    prefix: str,  # noqa: F811
    workers: Workers,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Both workers pass the store check before either has a record; the claim then makes the second wait
    for the first run, and the checkpoint it finds after it is the trace of a used pid."""
    log = tmp_path / "steps.log"
    workers("--prefetch", "1")
    workers("--prefetch", "1")  # one task each: the two launches go to two workers
    ctl = controller(prefix)
    try:
        pid = uuid.uuid4()
        kwargs = {"inputs": {"n": 3, "delay": 0.3, "log": str(log)}, "pid": pid}
        both = [ctl.launch_process(Steps, init_kwargs=kwargs, persist=True) for _ in "ab"]
        outcomes = list(process_comms.wait_all(both, timeout=60).values())
        assert sorted(type(o).__name__ for o in outcomes) == ["DuplicatePid", "dict"], outcomes
        assert len(log.read_text().splitlines()) == 3  # one run of three steps
    finally:
        ctl.close()


# -- typos leave no phantoms -----------------------------------------------------------------------------
def test_cli_kill_of_an_unknown_pid_leaves_no_phantom(run: Run, worker: Path) -> None:  # noqa: F811
    unknown = [str(uuid.uuid4()) for _ in range(3)]
    for pid in unknown:
        killed = run("kill", pid)
        assert killed.returncode == cli.EXIT_UNREACHABLE, killed.stderr
        assert "will be dropped" in killed.stderr
    listing = run("--json", "list")
    assert listing.returncode == 0, listing.stderr
    assert not {str(row["pid"]) for row in json.loads(listing.stdout)} & set(unknown)
    killed_only = run("--json", "list", "--state", "killed")
    assert json.loads(killed_only.stdout) == [], killed_only.stdout
    shown = run("show", unknown[0])
    assert shown.returncode == 0, shown.stderr
    assert "state:     kill requested for an unknown pid" in shown.stdout, shown.stdout
    status = run("status", unknown[0])
    assert status.returncode == cli.EXIT_UNREACHABLE and "a kill was requested" in status.stderr, status.stderr
    # the kill still holds for a launch of that pid that comes later (a task that was queued): it never runs,
    # and now it is a process, killed before it ran, with the launch's class and inputs
    late = run("launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}', "--pid", unknown[0])
    assert late.returncode == cli.EXIT_REMOTE and "killed before a worker ran it" in late.stderr, late.stderr
    [answer] = json.loads(run("--json", "show", unknown[0]).stdout)
    record = answer["result"]
    assert (record["state_name"], record["class"], record["inputs"]) == ("killed", "tests.procs:Add", {"a": 1, "b": 2})
    assert [h["event"] for h in record["history"]] == ["kill requested", "killed"]
    listed = json.loads(run("--json", "list").stdout)
    assert [(str(r["pid"]), r["state_name"]) for r in listed] == [(unknown[0], "killed")]


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_kill_requests_for_unknown_pids_are_capped_and_expire(names: dict[str, str], tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    store: Any = SqlPersister(url) if kind == "sqlite" else InMemoryPersister()
    fleet = _worker(names, url if kind == "sqlite" else store)
    assert fleet.records is not None
    fleet.records.kill_request_max_count = 5
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            kills = [ctl.kill_process(uuid.uuid4()) for _ in range(30)]
            for kill in kills:
                with pytest.raises(process_comms.ProcessUnreachable, match="will be dropped"):
                    kill.result(T)
            assert 1 <= len(store.list_records(KILL_REQUESTED, 1000)) <= 5
            assert ctl.list_processes().result(T) == []
            fleet.records.kill_request_max_age = 0.0  # every older one has expired by the next kill
            with pytest.raises(process_comms.ProcessUnreachable):
                ctl.kill_process(uuid.uuid4()).result(T)
            assert store.list_records(KILL_REQUESTED, 1000) == []
    finally:
        store.close()
        fleet.stop()


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_two_launches_of_one_new_pid_at_once_run_one_process(names: dict[str, str], tmp_path: Path) -> None:
    """Both arrive before either has a record: the worker's check of the store alone would let both run."""
    fleet = _worker(names, f"sqlite:///{tmp_path}/store.db")
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            for _ in range(5):
                pid = uuid.uuid4()
                both = [ctl.launch_process(Waiter, init_kwargs={"inputs": {}, "pid": pid}, nowait=True) for _ in "ab"]
                outcomes = process_comms.wait_all(both, timeout=T)
                assert sorted(type(o).__name__ for o in outcomes.values()) == ["DuplicatePid", "UUID"], outcomes
                assert ctl.kill_process(pid).result(T) is True
    finally:
        fleet.stop()


def test_delete_records_drops_those_pids_only_and_a_pid_written_again_takes_its_new_inputs(
    persister: process_comms.Persister,  # noqa: F811
) -> None:
    """What a kill request's conversion needs: a store keeps a pid's first inputs, so the request goes first."""
    request, other = record(KILL_REQUESTED, inputs={}), record()
    persister.save_records([request, other])
    persister.delete_records([request["pid"], uuid.uuid4()])  # a pid without a record is no error
    assert persister.load_record(request["pid"]) is None
    assert persister.load_record(other["pid"]) is not None
    persister.save_records([{**request, "state_name": "killed", "inputs": {"a": 1}}])
    again = persister.load_record(request["pid"])
    assert again is not None and again["inputs"] == {"a": 1}
