"""Records are never lost for a neighbour's sake, and what a user can inflate in them is bounded
(process_comms/worker/records.py, process_comms/worker/persistence/_records.py and memory.py): workers in this
interpreter on the real broker, their stores in memory."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.client.records import NO_RECORDS_WORKER
from process_comms.errors import PersistenceError
from process_comms.worker import records as records_module
from process_comms.worker.persistence import InMemoryPersister
from process_comms.worker.records import CYCLE_EVENT, MAX_HISTORY
from tests.cli.test_commands import Run, _global_options, rmq_cleanup, run  # noqa: F401 (fixtures)
from tests.conftest import BROKER_URL
from tests.dashboard.test_api import Served
from tests.procs import Add, Waiter
from tests.waiting import wait_until
from tests.worker.records_bounds_procs import HugeOutput, Napper

pytestmark = pytest.mark.broker

T = 20.0


@contextlib.contextmanager
def worker_and_controller(
    names: dict[str, str], store: Any
) -> Iterator[tuple[process_comms.Worker, process_comms.RemoteProcessThreadController]]:
    worker = process_comms.Worker(
        BROKER_URL,
        persister=store,
        allowed_modules=["tests.procs", "tests.worker.records_bounds_procs"],
        testing_mode=True,
        **names,
    ).start()
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            yield worker, process_comms.RemoteProcessThreadController(comm)
    finally:
        worker.stop()


class FirstWriteHeld(InMemoryPersister):
    """Holds its first write until the test lets it through, so every record changed meanwhile is in the next."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.let_through = threading.Event(), threading.Event()
        self.writes = 0

    def save_records_nowait(self, records: Sequence[dict[str, Any]]) -> bool:
        return False  # every write on the thread path, where it can be held

    def save_records(self, records: Sequence[dict[str, Any]]) -> None:
        self.writes += 1
        if self.writes == 1:
            self.holding.set()
            assert self.let_through.wait(T), "the test never let the first write through"
        super().save_records(records)


def test_a_record_whose_output_cannot_be_shown_takes_no_neighbour_with_it(names: dict[str, str]) -> None:
    store = FirstWriteHeld()
    try:
        with worker_and_controller(names, store) as (_worker, ctl):
            ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
            assert store.holding.wait(T)
            adds = [
                ctl.launch_process(Add, init_kwargs={"inputs": {"a": i, "b": 1}}, nowait=True).result(T)
                for i in range(3)
            ]
            huge = ctl.launch_process(HugeOutput, init_kwargs={"inputs": {}}, nowait=True).result(T)
            for pid in (*adds, huge):
                assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.1).result(T) == "finished"
            held = ctl.get_process(huge).result(T)  # from the process itself: before, the answer could not be sent
            assert held["state_name"] == "finished" and "cannot be shown" in held["outputs"]["huge"]["!!unencodable"]
            store.let_through.set()  # the four ends now go in one batch
            # before: repr() of the huge int raised in the store, the batch was dropped, the adds stayed running
            for i, pid in enumerate(adds):
                wait_until(lambda pid=pid: (store.load_record(pid) or {}).get("state_name") == "finished", T, "add")
                assert store.load_record(pid)["outputs"] == {"sum": i + 1}
            wait_until(lambda: (store.load_record(huge) or {}).get("state_name") == "finished", T, "huge")
            outputs = store.load_record(huge)["outputs"]
            assert outputs["fine"] == 1 and "cannot be shown" in outputs["huge"]["!!unencodable"]
            assert ctl.get_process(huge).result(T)["outputs"]["fine"] == 1  # the fleet answers for it too
    finally:
        store.let_through.set()


class FailingWrites(InMemoryPersister):
    """Fails every write of a record whose input ``a`` is ``failing`` (``times`` times; None: always)."""

    def __init__(self, failing: int, times: int | None) -> None:
        super().__init__()
        self.failing, self.times = failing, times
        self.failed = 0

    def save_records_nowait(self, records: Sequence[dict[str, Any]]) -> bool:
        self._maybe_fail(records)
        return super().save_records_nowait(records)

    def save_records(self, records: Sequence[dict[str, Any]]) -> None:
        self._maybe_fail(records)
        super().save_records(records)

    def _maybe_fail(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            if (record.get("inputs") or {}).get("a") == self.failing and (
                self.times is None or self.failed < self.times
            ):
                self.failed += 1
                raise PersistenceError("the store is away (the test's)")


def test_a_failed_record_write_is_retried_with_back_off(
    names: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records_module, "RECORD_RETRY_DELAY", 0.05)
    store = FailingWrites(failing=1, times=3)
    with caplog.at_level(logging.WARNING, logger="process_comms.worker.records"):
        with worker_and_controller(names, store) as (_worker, ctl):
            pid = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=True).result(T)
            assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.1).result(T) == "finished"
            # before: the failed write was logged once and never tried again
            wait_until(lambda: (store.load_record(pid) or {}).get("state_name") == "finished", T, "the retried write")
    assert store.failed == 3
    assert any("try 1 of" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)


def test_a_record_write_that_keeps_failing_is_given_up_loudly(
    names: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records_module, "RECORD_RETRY_DELAY", 0.02)
    monkeypatch.setattr(records_module, "RECORD_RETRY_MAX_DELAY", 0.05)
    store = FailingWrites(failing=1, times=None)
    with caplog.at_level(logging.WARNING, logger="process_comms.worker.records"):
        with worker_and_controller(names, store) as (_worker, ctl):
            doomed = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=True).result(T)
            fine = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 2, "b": 2}}, nowait=True).result(T)

            def given_up() -> bool:
                return any(r.levelno == logging.ERROR and str(doomed) in r.getMessage() for r in caplog.records)

            wait_until(given_up, T, "the error that gives the record up")
            wait_until(lambda: (store.load_record(fine) or {}).get("state_name") == "finished", T, "the other record")
    tries = [r for r in caplog.records if str(doomed) in r.getMessage()]
    assert [r.levelno for r in tries] == [logging.WARNING] * (records_module.RECORD_WRITE_ATTEMPTS - 1) + [
        logging.ERROR
    ]
    assert store.load_record(doomed) is None


def test_the_history_folds_sleeps_into_one_entry(names: dict[str, str]) -> None:
    with worker_and_controller(names, InMemoryPersister()) as (_worker, ctl):
        pid = ctl.launch_process(Napper, init_kwargs={"inputs": {"naps": 255}}, nowait=True).result(T)
        assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.1).result(T) == "finished"
        history = ctl.get_process(pid).result(T)["history"]
    # before: 513 entries (created, then a running/waiting pair per nap)
    events = [entry["event"] for entry in history]
    assert events == ["created", "running", CYCLE_EVENT, "running", "finished"], events
    cycle = history[2]
    assert cycle["count"] == 2 * 255 - 1 and cycle["time"] <= cycle["last"] <= history[3]["time"]


def test_the_history_keeps_its_first_and_newest_entries_within_its_bound(names: dict[str, str]) -> None:
    with worker_and_controller(names, InMemoryPersister()) as (_worker, ctl):
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        for _ in range(MAX_HISTORY // 2 + 5):  # pause and play: two entries each, never folded
            assert ctl.pause_process(pid).result(T) is True
            assert ctl.play_process(pid).result(T) is True
        history = ctl.get_process(pid).result(T)["history"]
        assert ctl.kill_process(pid).result(T) is True
    assert len(history) == MAX_HISTORY
    assert history[0]["event"] == "created" and history[0]["dropped"] > 0
    assert history[-1]["event"] == "played"


def test_a_memory_store_keeps_its_records_within_its_byte_bound(names: dict[str, str]) -> None:
    with worker_and_controller(names, "memory://?max_record_bytes=60000") as (worker, ctl):
        pids = []
        for i in range(120):  # one at a time: an early one's record is gone by the end
            pids.append(ctl.launch_process(Add, init_kwargs={"inputs": {"a": i, "b": 1}}, nowait=True).result(T))
            assert ctl.wait_for_process(pids[-1], timeout=T, poll_interval=0.1).result(T) == "finished"
        store = worker.persister
        assert isinstance(store, InMemoryPersister)
        wait_until(lambda: (store.load_record(pids[-1]) or {}).get("state_name") == "finished", T, "the last record")
        # before: the URL was not understood, and the store kept every record (up to 100,000 or 30 days)
        assert store.max_record_bytes == 60000 and 0 < store.record_bytes <= 60000
        assert store.records_evicted > 0 and store.load_record(pids[0]) is None
        listed = {str(row["pid"]) for row in ctl.list_processes(limit=1000).result(T)}
        assert str(pids[-1]) in listed and str(pids[0]) not in listed


def _memory_record(state: str, n: int) -> dict[str, Any]:
    now = 1_700_000_000.0 + n
    return {"pid": f"p{n}", "class": "tests.procs:Add", "state_name": state, "ctime": now, "mtime": now, "inputs": {}}


def test_a_memory_store_forgets_what_deleted_records_cost_and_evicts_the_first_ended_first() -> None:
    one = InMemoryPersister(max_record_bytes=None)
    one.save_records([_memory_record("finished", 99)])
    each = one.record_bytes  # what the largest record below counts (a two-digit pid, the longest state name)
    store = InMemoryPersister(max_record_bytes=10 * each)
    store.save_records([_memory_record("finished", n) for n in range(8)])
    store.delete_records([f"p{n}" for n in range(8)])
    # before: deleted records still counted, so these were evicted with the store holding five of its ten
    assert store.record_bytes == 0
    store.save_records([_memory_record("waiting", n) for n in range(20, 25)])  # live: never evicted
    store.save_records([_memory_record("finished", n) for n in range(10, 15)])
    assert store.records_evicted == 0 and len(store.list_records(limit=100)) == 10

    store.save_records([_memory_record("killed", 20)])  # written first, ended last: the last to go
    store.save_records([_memory_record("finished", n) for n in (30, 31)])  # two over the bound: two go
    kept = {row["pid"] for row in store.list_records(limit=100)}
    assert kept == {"p12", "p13", "p14", "p20", "p21", "p22", "p23", "p24", "p30", "p31"}, kept
    assert store.records_evicted == 2 and store.record_bytes <= 10 * each


def test_a_memory_url_with_an_unknown_option_is_refused() -> None:
    with pytest.raises(PersistenceError, match="unknown memory:// option"):
        process_comms.get_persister("memory://?max_records=5")
    with pytest.raises(PersistenceError, match="positive integer"):
        process_comms.get_persister("memory://?max_record_bytes=lots")


def test_a_worker_with_records_off_keeps_none_and_says_so(
    broker_url: str,
    names: dict[str, str],
    run: Run,  # noqa: F811
    tmp_path: Path,
) -> None:
    args = [*_global_options(broker_url, names), "worker", "--persister", "memory://", "--records", "off"]
    worker = Served([*args, "--allow", "tests.procs"], tmp_path / "worker.err", "worker ready")  # before: usage error
    try:
        with process_comms.connect(broker_url, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            assert ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}
        listed = run("list")
        assert listed.returncode == 3 and NO_RECORDS_WORKER in listed.stderr, listed.stderr
        assert worker.stop() == 0, worker.err_path.read_text()
    finally:
        worker.close()
