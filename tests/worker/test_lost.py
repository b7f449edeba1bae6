"""A process's state is never a guess: one authority per process, and a terminal state for the lost.

While a worker holds a process the process answers, once no one holds it its record answers, and the two
answers are the same (wire/messages.py). A process whose worker stopped or died without handing it back (it
was not persisted) ends ``excepted`` with a ``ProcessLost`` exception in its record: marked by the stopping
worker itself, or by another worker of the fleet once the holder's liveness token is gone
(worker/records_service.py, ``sweep_lost``); a waiter gets :class:`process_comms.ProcessLost`. A
``state_changed`` broadcast is a hint: a forged one does not end a wait. Workers that stop or die run in
their own OS processes (tests/faults/_support.py).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pytest

import process_comms
from process_comms.client.records import status_from_record
from process_comms.worker.persistence import SqlPersister
from tests.conftest import BROKER_URL, rmq_options
from tests.dashboard.test_api import start_dashboard
from tests.faults._support import controller, prefix, workers
from tests.procs import Add, Steps, Waiter
from tests.waiting import wait_until
from tests.worker.test_takeover import steps_logged

__all__ = ["prefix", "workers"]  # fixtures

T = 20.0
#: The most seconds from a worker's death to its lost process's record saying so (sweep 1 s + grace 2 s).
LOST_WITHIN = 10.0
#: Seconds one status question waits while the test waits for the record to say lost.
ASK_TIMEOUT = 3.0


def _names(prefix: str) -> dict[str, str]:
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


def _is_lost(status: dict[str, Any]) -> bool:
    exception = status.get("exception") or {}
    return status.get("state_name") == "excepted" and exception.get("type") == "ProcessLost"


def _said_lost(ctl: Any, pid: Any) -> bool:
    """Whether ``pid``'s status says lost; until its record is marked, the fleet may also answer that no worker
    holds it (the route is gone, the record still says running), or a status sent as the worker died goes with
    its route's queue and gets no answer until its deadline: not yet, ask again."""
    try:
        return _is_lost(ctl.get_status(pid, timeout=ASK_TIMEOUT).result(T))
    except (process_comms.ProcessUnreachable, process_comms.TimeoutError):
        return False


def _no_worker_up(ctl: Any, pid: Any) -> bool:
    """Whether the fleet answers ``pid``'s status with "no worker is up" (no guess either); a status sent as
    the worker died goes with its route's queue and gets no answer until its deadline: not yet, ask again."""
    try:
        ctl.get_status(pid, timeout=ASK_TIMEOUT).result(T)
    except process_comms.ProcessUnreachable as exc:
        return "no worker is up" in str(exc)
    except process_comms.TimeoutError:
        return False
    raise AssertionError(f"process {pid} has a status with no worker up")


def _listed(ctl: Any, pid: Any) -> dict[str, Any]:
    rows = {str(row["pid"]): row for row in ctl.list_processes(limit=1000).result(T)}
    return rows[str(pid)]


def _metrics_by_state(dashboard: Any) -> dict[str, float]:
    import httpx
    from prometheus_client import parser

    text = httpx.get(f"{dashboard.url}/metrics", timeout=T).text
    return {
        sample.labels["state"]: sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "process_comms_processes"
    }


def _check_lost_everywhere(ctl: Any, pid: Any, waiter: Any, dashboard: Any) -> None:
    status = ctl.get_status(pid).result(T)
    assert _is_lost(status) and status["status"].startswith("lost: "), status
    row = _listed(ctl, pid)
    assert row["state_name"] == "excepted" and row["status"].startswith("lost: "), row
    with pytest.raises(process_comms.ProcessLost):
        waiter.result(T)
    with pytest.raises(process_comms.ProcessLost):
        ctl.get_outputs(pid).result(T)
    by_state = wait_until(lambda: (m := _metrics_by_state(dashboard)).get("excepted", 0) >= 1 and m, T, "metrics")
    assert by_state.get("running", 0) == 0 and by_state.get("waiting", 0) == 0, by_state


# -- workers in their own OS processes ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sigterm_stop_hands_back_the_persisted_and_marks_the_rest_lost(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    log, first_log = tmp_path / "steps.log", tmp_path / "first.log"
    first = workers("--log-level", "INFO", log_path=first_log)
    dashboard = start_dashboard(BROKER_URL, _names(prefix), tmp_path)
    with contextlib.closing(dashboard), controller(prefix) as ctl:
        kept = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 100, "delay": 0.05, "log": str(log)}}, persist=True, nowait=True
        ).result(T)
        lost = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        wait_until(lambda: len(steps_logged(log)) >= 3, T, "steps on the first worker")
        wait_until(lambda: ctl.get_status(lost).result(T)["state_name"] == "waiting", T, "the waiter to wait")
        waiter = ctl.wait_for_process(lost, timeout=60, poll_interval=0.2)
        workers()  # a second worker of the fleet: it continues the persisted one and answers for records
        stopped_at = time.monotonic()
        assert first.terminate() == 0
        wait_until(lambda: _said_lost(ctl, lost), LOST_WITHIN, lambda: f"the record to say lost{workers.logs()}")
        print(f"lost after SIGTERM: {time.monotonic() - stopped_at:.2f} s")
        assert ctl.wait_for_process(kept, timeout=60).result(62) == "finished"  # continued on the second worker
        _check_lost_everywhere(ctl, lost, waiter, dashboard)
    text = first_log.read_text()
    assert f"handed back 1 process(es) to the queue: ['{kept}']" in text, text
    assert f"could not hand back 1 process(es), not persisted (marked lost in their records): ['{lost}']" in text


@pytest.mark.slow
def test_a_sigkilled_workers_unpersisted_process_is_marked_lost_by_the_fleet_within_seconds(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    first = workers()
    dashboard = start_dashboard(BROKER_URL, _names(prefix), tmp_path)
    with contextlib.closing(dashboard), controller(prefix) as ctl:
        lost = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        wait_until(lambda: ctl.get_status(lost).result(T)["state_name"] == "waiting", T, "the waiter to wait")
        waiter = ctl.wait_for_process(lost, timeout=60, poll_interval=0.2)
        workers()  # another worker sharing the store: it marks the records of a gone holder
        killed_at = time.monotonic()
        first.sigkill()
        wait_until(lambda: _said_lost(ctl, lost), LOST_WITHIN, lambda: f"the record to say lost{workers.logs()}")
        print(f"lost after SIGKILL: {time.monotonic() - killed_at:.2f} s (sweep 1 s, grace 2 s)")
        _check_lost_everywhere(ctl, lost, waiter, dashboard)
        record = ctl.get_process(lost).result(T)
        assert record["history"][-1]["event"] == "lost" and re.search(r"its worker \S+ is gone", record["status"])


@pytest.mark.slow
def test_when_the_dead_worker_was_the_only_one_the_next_to_start_marks_its_processes_lost(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    first = workers()
    with controller(prefix) as ctl:
        lost = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        store = SqlPersister(f"sqlite:///{tmp_path}/checkpoints.db")  # the workers' store (faults/_support.py)
        try:  # its first record write (within RECORD_FLUSH_DELAY): a worker dead before it leaves no record
            wait_until(lambda: (store.load_record(lost) or {}).get("state_name") == "waiting", T, "the record")
        finally:
            store.close()
        first.sigkill()
        wait_until(lambda: _no_worker_up(ctl, lost), T, "no worker is up")  # nobody answers for records: no guess
        started_at = time.monotonic()
        workers()  # shares the store (the same SQLite file)
        wait_until(lambda: _said_lost(ctl, lost), LOST_WITHIN, lambda: f"the record to say lost{workers.logs()}")
        print(f"marked lost {time.monotonic() - started_at:.2f} s after the next worker was started")
        with pytest.raises(process_comms.ProcessLost):
            ctl.wait_for_process(lost, timeout=T).result(T)


# -- one interpreter ----------------------------------------------------------------------------------------------
@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_a_forged_terminal_broadcast_does_not_end_a_wait(names: dict[str, str], tmp_path: Path) -> None:
    options = rmq_options(names)
    with (
        process_comms.Worker(BROKER_URL, persister=f"sqlite:///{tmp_path}/w.db", **options),
        process_comms.connect(BROKER_URL, **options) as comm,
    ):
        ctl = process_comms.RemoteProcessThreadController(comm)
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        wait_until(lambda: ctl.get_status(pid).result(T)["state_name"] == "waiting", T, "the waiter to wait")
        heard: list[Any] = []
        comm.add_broadcast_subscriber(lambda _c, _b, sender, subject, _cid: heard.append((sender, subject)))
        waiter = ctl.wait_for_process(pid, timeout=4, poll_interval=1.0)
        forged = f"body: null\ncorrelation_id: null\nsender: !uuid '{pid}'\nsubject: state_changed.waiting.finished\n"
        raw = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            raw.channel().basic_publish(names["message_exchange"], "[broadcast]", forged.encode())
        finally:
            raw.close()
        wait_until(lambda: (pid, "state_changed.waiting.finished") in heard, T, "the forged broadcast to arrive")
        with pytest.raises(process_comms.TimeoutError):  # before: 'finished' as soon as the forgery arrived
            waiter.result(T)
        assert ctl.get_status(pid).result(T)["state_name"] == "waiting"
        assert ctl.kill_process(pid).result(T) is True
        assert ctl.wait_for_process(pid, timeout=T).result(T) == "killed"


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_the_status_right_after_the_end_is_the_records_answer(names: dict[str, str], tmp_path: Path) -> None:
    """Before: the still-held process answered without ``outputs`` (about 1 run in 7), the record with them."""
    options = rmq_options(names)
    with (
        process_comms.Worker(BROKER_URL, persister=f"sqlite:///{tmp_path}/w.db", **options) as worker,
        process_comms.connect(BROKER_URL, **options) as comm,
    ):
        ctl = process_comms.RemoteProcessThreadController(comm)
        by_holder = 0
        for i in range(40):
            pid = ctl.launch_process(Add, init_kwargs={"inputs": {"a": i, "b": 1}}, nowait=True).result(T)
            first = wait_until(
                lambda pid=pid: (s := ctl.get_status(pid).result(T))["state_name"] == "finished" and s, T, "the end"
            )
            by_holder += worker.launcher.held(pid) is not None  # the process answered: its record is not written
            assert first["outputs"] == {"sum": i + 1}, first
            wait_until(lambda pid=pid: worker.launcher.held(pid) is None, T, "the worker to let go")
            record = ctl.get_process(pid).result(T)
            assert ctl.get_status(pid).result(T) == first == status_from_record(record)
        print(f"answered by the holder right after the end: {by_holder} of 40")


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_pid_and_token_name_the_holder_in_the_record(names: dict[str, str], tmp_path: Path) -> None:
    options = rmq_options(names)
    with (
        process_comms.Worker(BROKER_URL, persister=f"sqlite:///{tmp_path}/w.db", **options) as worker,
        process_comms.connect(BROKER_URL, **options) as comm,
    ):
        ctl = process_comms.RemoteProcessThreadController(comm)
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        record = wait_until(lambda: worker.persister.load_record(pid), T, "the record")
        assert record["worker"] == worker.worker_id and isinstance(record["token"], str)
        assert comm.submit(comm.core.is_alive, record["token"]).result(T) is True
        row = _listed(ctl, pid)
        assert row["worker"] == worker.worker_id
        assert uuid.UUID(str(pid))


@pytest.mark.slow
def test_with_no_worker_up_the_store_answers_an_unended_unpersisted_record_as_lost(
    prefix: str, workers: Any, tmp_path: Path
) -> None:
    """The store read with no worker up (``store=``) tells no lie either: the record still says waiting, but no
    worker is up to run it, so the answer is lost (the next worker to start marks the record so)."""
    first = workers()
    with controller(prefix) as ctl:
        lost = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        persisted = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True, persist=True).result(T)
        store = SqlPersister(f"sqlite:///{tmp_path}/checkpoints.db")  # the workers' store (faults/_support.py)
        try:
            for pid in (lost, persisted):
                wait_until(lambda pid=pid: (store.load_record(pid) or {}).get("state_name") == "waiting", T, "record")
        finally:
            store.close()
        first.sigkill()
    reader = process_comms.open_record_store(f"sqlite:///{tmp_path}/checkpoints.db")
    try:
        with contextlib.closing(controller(prefix)) as plain:
            wait_until(lambda: _no_worker_up(plain, lost), T, "no worker is up")  # no store: no answer, no guess
        comm = process_comms.connect(BROKER_URL, **_names(prefix))
        with comm:
            ctl = process_comms.RemoteProcessThreadController(comm, store=reader)
            status = ctl.get_status(lost).result(T)
            assert _is_lost(status) and status["source"] == "store" and status["live"] is False
            rows = {str(r["pid"]): r for r in ctl.list_processes().result(T)}
            assert rows[str(lost)]["state_name"] == "excepted"
            # a persisted one is not lost: its task is back in the queue for the next worker
            assert ctl.get_status(persisted).result(T)["state_name"] == "waiting"
            assert rows[str(persisted)]["state_name"] == "waiting"  # the listing's summary tells them apart too
    finally:
        reader.close()


@pytest.mark.broker  # reaches BROKER_URL directly, not through the broker_url fixture
def test_a_gone_holders_record_behind_a_page_of_live_ones_is_still_marked_lost(
    names: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a sweep read only the newest ``LOST_SWEEP_LIMIT`` records of each unended state, so in a store with
    more live processes than that (a fleet at scale), an older process of a dead worker was never looked at and
    stayed ``waiting`` forever. The sweep now pages through them, a page a sweep (the page made small here), and
    remembers since when a holder was gone across its pages."""
    from process_comms.worker import records_service

    monkeypatch.setattr(records_service, "LOST_SWEEP_LIMIT", 2)  # a page of 2 per unended state: 6 rows
    options = rmq_options(names)
    db = f"sqlite:///{tmp_path}/w.db"
    now = time.time()

    def record(token: str, ctime: float) -> dict[str, Any]:
        pid = str(uuid.uuid4())
        return {"pid": pid, "class": "tests.procs:Waiter", "state_name": "waiting", "persisted": False,
                "token": token, "worker": "elsewhere", "ctime": ctime, "mtime": ctime, "history": []}  # fmt: skip

    with process_comms.connect(BROKER_URL, **options) as holder:  # a live holder, not the sweeping worker
        live = holder.submit(holder.core.liveness_token).result(T)
        assert isinstance(live, str)
        gone = record(f"pc-gone-{uuid.uuid4()}", now - 100)  # no queue of that name: its holder is gone
        store = SqlPersister(db)
        try:  # pages of 6 rows: the gone one comes in the second or third, the last (short) page is older
            store.save_records([gone, *(record(live, now - 200 + i * 20) for i in range(17))])
        finally:
            store.close()
        with process_comms.Worker(BROKER_URL, persister=db, **options) as worker:
            wait_until(
                lambda: (worker.persister.load_record(gone["pid"]) or {}).get("state_name") == "excepted",
                T,
                "the gone holder's record to be marked lost",
            )
            marked = worker.persister.load_record(gone["pid"])
            assert marked["exception"]["type"] == "ProcessLost"
            rows = worker.persister.list_records(None, 100, states=["waiting"])
            assert len(rows) == 17 and all(row["token"] == live for row in rows)  # the live holder's: untouched
