"""A reply does not wait for its process's record (issue 16's launch rate), and nothing is lost by it:
until the record is written, the worker keeps the ended process's route bound and answers for it from
memory (process_comms/worker/launcher.py, Routes; docs/performance.md "What records cost")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import process_comms
from process_comms.worker.persistence import InMemoryPersister
from tests.conftest import BROKER_URL
from tests.procs import Add, Waiter
from tests.waiting import wait_until

pytestmark = pytest.mark.broker  # every test talks to RabbitMQ at BROKER_URL, not through the broker_url fixture

T = 20.0


class HeldEnds(InMemoryPersister):
    """A store that holds every write of an ended process's record until the test lets it through."""

    def __init__(self, held: str = "finished") -> None:
        super().__init__()
        self.held = held
        self.let_through = threading.Event()

    def save_records_nowait(self, records: Sequence[dict[str, Any]]) -> bool:
        return False  # every write on the thread path, where it can be held

    def save_records(self, records: Sequence[dict[str, Any]]) -> None:
        if any(r.get("state_name") == self.held for r in records):
            assert self.let_through.wait(T), "the test never let the final record through"
        super().save_records(records)


@contextlib.contextmanager
def held_worker(
    names: dict[str, str], held: str = "finished"
) -> Iterator[tuple[HeldEnds, process_comms.Worker, process_comms.RemoteProcessThreadController]]:
    """A worker in this interpreter whose store holds back the records of processes that end ``held``,
    and a controller on a connection of its own; the store lets everything through at the end."""
    store = HeldEnds(held)
    worker = process_comms.Worker(
        BROKER_URL, persister=store, allowed_modules=["tests.procs"], testing_mode=True, **names
    ).start()
    try:
        with process_comms.connect(BROKER_URL, testing_mode=True, **names) as comm:
            yield store, worker, process_comms.RemoteProcessThreadController(comm)
    finally:
        store.let_through.set()
        worker.stop()


def test_the_reply_comes_before_the_record_and_the_process_answers_until_it_is_written(
    names: dict[str, str],
) -> None:
    with held_worker(names) as (store, worker, ctl):
        pid = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 2, "b": 3}}, nowait=True).result(T)
        # before: the launch's reply waited for the record, so this waited for the test's gate (and timed out)
        assert ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 1}}).result(T) == {"sum": 2}
        assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.1).result(T) == "finished"
        assert store.load_record(pid) is None or store.load_record(pid)["state_name"] != "finished"
        assert worker.launcher.held(pid) is not None  # ended, its route still bound
        held = ctl.get_status(pid).result(T)  # the process answered (the store has no finished record yet)...
        assert held["state"] == "ProcessState.FINISHED" and held["outputs"] == {"sum": 5}  # ...as its record will
        record = ctl.get_process(pid).result(T)
        assert record["state_name"] == "finished" and record["outputs"] == {"sum": 5} and record["live"] is False
        assert ctl.get_outputs(pid).result(T) == {"sum": 5}
        rows = {str(row["pid"]): row for row in ctl.list_processes().result(T)}
        assert rows[str(pid)]["state_name"] == "finished" and rows[str(pid)]["live"] is False

        store.let_through.set()
        wait_until(lambda: worker.launcher.held(pid) is None, T, "the ended process to let go after its record")
        assert store.load_record(pid)["outputs"] == {"sum": 5}
        status = ctl.get_status(pid).result(T)
        assert status["record"] is True and status["outputs"] == {"sum": 5}
        assert status == held  # one answer, whoever gives it (wire/status.py)


def test_a_killed_process_answers_killed_until_its_record_says_so(names: dict[str, str]) -> None:
    """Before: a kill settled the process before its last save, so its route went at once and a status
    asked right after the kill's reply came from the record still being written: ``waiting``."""
    with held_worker(names, "killed") as (store, worker, ctl):
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        wait_until(lambda: ctl.get_status(pid).result(T)["state"] == "ProcessState.WAITING", T, "waiting")
        assert ctl.kill_process(pid, "not needed").result(T) is True
        assert ctl.get_status(pid).result(T)["state"] == "ProcessState.KILLED"
        record = ctl.get_process(pid).result(T)
        assert record["state_name"] == "killed" and record["status"] == "not needed"
        store.let_through.set()
        wait_until(lambda: worker.launcher.held(pid) is None, T, "the killed process to let go after its record")
        assert ctl.get_status(pid).result(T)["state_name"] == "killed"


def test_a_launch_of_a_held_pid_is_refused_and_the_held_run_keeps_answering(names: dict[str, str]) -> None:
    """A launch that reuses the pid of an ended process still held (its record not yet written) is refused
    (a pid is used once: worker/_pids.py); the held run keeps its route and its record is written unchanged.
    It used to run a second process under the pid, replacing the first one's outputs and history."""
    with held_worker(names) as (store, worker, ctl):
        pid = uuid.uuid4()
        assert ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}, "pid": pid}).result(T) == {"sum": 3}
        assert worker.launcher.held(pid) is not None  # ended, its record held back by the store
        again = ctl.launch_process(Waiter, init_kwargs={"inputs": {}, "pid": pid}, nowait=True)
        with pytest.raises(process_comms.DuplicatePid, match="a pid is used once"):
            again.result(T)
        assert ctl.get_status(pid).result(T)["state"] == "ProcessState.FINISHED"
        store.let_through.set()
        wait_until(lambda: not worker.launcher.ending, T, "the run to let go")
        record = ctl.get_process(pid).result(T)
        assert (record["state_name"], record["outputs"], record["class"]) == ("finished", {"sum": 3}, "tests.procs:Add")


def test_a_gone_route_answers_as_its_ended_process_did_without_holding_it(names: dict[str, str]) -> None:
    """Requests routed to an ended process before its unbind are answered by the communicator's retired
    subscriber. It used to hold the whole process (up to 1,024 of them per worker, with their tasks, inputs,
    outputs and tracebacks, for a minute); now it holds the final answers only, and they are the same."""
    import gc
    import weakref

    messages = [
        {"intent": "status"},
        {"intent": "play"},
        {"intent": "pause", "message": "later"},
        {"intent": "pause", "message": None, "release": True},
        {"intent": "kill", "message": "stop"},
    ]
    with held_worker(names, held="killed") as (store, worker, ctl):
        finished = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 2, "b": 3}}, nowait=True).result(T)
        wait_until(lambda: worker.launcher.held(finished) is None, T, "the finished process to let go")
        killed = ctl.launch_process(Waiter, nowait=True).result(T)
        wait_until(lambda: worker.launcher.held(killed) is not None, T, "the waiter to run")
        assert ctl.kill_process(killed, "stopped by the test").result(T) is True
        proc = worker.launcher.held(killed)
        assert proc is not None and proc.state.terminal  # ended; its record (and so its unbind) held back
        core = worker.communicator.core

        async def answers_of(subscriber: Any) -> list[Any]:
            out: list[Any] = []
            for msg in [*messages, {"intent": "jump"}, {"no": "intent"}, {"intent": "kill", "message": 1.5}]:
                try:
                    answer = subscriber(core, msg)
                    if isinstance(answer, concurrent.futures.Future):
                        answer = await asyncio.wrap_future(answer)
                    if isinstance(answer, dict):
                        answer = {k: v for k, v in answer.items() if k != "host"}
                    out.append(answer)
                except Exception as exc:  # noqa: BLE001 - the error is the answer compared
                    out.append((type(exc).__name__, str(exc)))
            return out

        live = worker.communicator.submit(answers_of, proc._on_rpc).result(T)
        ref = weakref.ref(proc)
        del proc
        store.let_through.set()
        wait_until(lambda: worker.launcher.held(killed) is None, T, "the killed process to let go")
        for pid, expected in ((killed, live), (finished, None)):
            retired = core._retired_rpc.get(str(pid))
            assert retired is not None, f"no retired route for {pid}"
            gone = worker.communicator.submit(answers_of, retired[0]).result(T)
            if expected is not None:
                assert gone == expected
            else:  # finished, not killed: play True, pauses False, kill False
                assert gone[0]["state"] == "ProcessState.FINISHED" and gone[1:5] == [True, False, False, False]
        assert live[4] is True and live[0]["state"] == "ProcessState.KILLED"
        gc.collect()
        assert ref() is None, (
            f"the ended process is still held by {[type(r).__name__ for r in gc.get_referrers(ref())]}"
        )
