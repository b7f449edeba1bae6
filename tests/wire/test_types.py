"""The protocol's data with types (process_comms/wire/types.py, states.py, names.py): the state names are plumpy's,
the TypedDicts name the keys the worker really sends, and each shared name has one home."""

from __future__ import annotations

import typing
import uuid

import plumpy
import plumpy.process_comms
import pytest

import process_comms
from process_comms.client import controller as controller_module
from process_comms.transports.rmq import _tasks
from process_comms.wire import listing, messages, names, states, status
from process_comms.wire.codec import JsonCodec, YamlCodec
from process_comms.wire.types import Pid, ProcessPage, ProcessRecord, ProcessStatus, ProcessSummary, WorkerInfo
from process_comms.worker import launcher as _fleet  # the fleet (queues, slots, workers answer) lives in launcher.py
from process_comms.worker import process as _state  # states, bundle and history live in process.py
from process_comms.worker.persistence import InMemoryPersister, _records
from tests.procs import Add

T = 30.0


def _keys(typed: type) -> set[str]:
    return set(typing.get_type_hints(typed))


# -- states -----------------------------------------------------------------------------------------------------
def test_the_state_names_are_plumpys() -> None:
    assert [(s.name, s.value) for s in states.ProcessState] == [(s.name, s.value) for s in plumpy.ProcessState]


def test_a_state_is_its_wire_string() -> None:
    running = states.ProcessState.RUNNING
    assert running == "running" and isinstance(running, str)
    assert str(running) == f"{running}" == "ProcessState.RUNNING"  # as a plain Enum's, as plumpy formats it
    for codec in (YamlCodec(), JsonCodec()):
        assert codec.decode(codec.encode({"state": running})) == {"state": "running"}
        assert type(codec.decode(codec.encode(running))) is str


def test_the_state_groups_have_one_home_and_cover_every_state() -> None:
    assert set(states.TERMINAL_STATES) | set(states.UNENDED_STATES) == {s.value for s in states.ProcessState}
    assert not set(states.TERMINAL_STATES) & set(states.UNENDED_STATES)
    assert messages.TERMINAL_STATES is states.TERMINAL_STATES
    assert _records.TERMINAL_STATE_NAMES is states.TERMINAL_STATES
    assert status.UNENDED_STATES is states.UNENDED_STATES
    assert listing.ACTIVE_STATES is states.UNENDED_STATES
    assert _state.ProcessState is states.ProcessState
    assert all(states.ProcessState(name).terminal for name in states.TERMINAL_STATES)


# -- shared names ------------------------------------------------------------------------------------------------
def test_the_shared_names_have_one_home() -> None:
    assert controller_module.WORKERS_SUBJECT is _fleet.WORKERS_SUBJECT is names.WORKERS_SUBJECT == "workers"
    assert _fleet.DEFAULT_QUEUE is _tasks.DEFAULT_QUEUE is names.DEFAULT_QUEUE == "default"
    assert _tasks.queue_name is names.queue_name  # the old private import keeps working


def test_queue_naming() -> None:
    assert names.queue_name("aiida-x.process.queue", None) == "aiida-x.process.queue"
    assert names.queue_name("aiida-x.process.queue", names.DEFAULT_QUEUE) == "aiida-x.process.queue"
    assert names.queue_name("aiida-x.process.queue", "gpu") == "aiida-x.process.queue.gpu"
    for bad in ("", "a#b", "a*", "x" * 201):
        with pytest.raises(ValueError):
            names.queue_name("q", bad)


# -- pids --------------------------------------------------------------------------------------------------------
def test_a_pid_is_what_the_codecs_and_stores_keep_apart() -> None:
    assert typing.get_args(Pid) == (uuid.UUID, int, str)
    store = InMemoryPersister()
    for pid in (uuid.uuid4(), 7, "7"):
        for codec in (YamlCodec(), JsonCodec()):
            back = codec.decode(codec.encode({"pid": pid}))["pid"]
            assert back == pid and type(back) is type(pid)
        store.save_records([{"pid": pid, "class": "m:C", "state_name": "created", "ctime": 1.0, "mtime": 1.0}])
        loaded = store.load_record(pid)
        assert loaded is not None and type(loaded["pid"]) is type(pid)
    assert messages.PID_TYPE is plumpy.process_comms.PID_TYPE or messages.PID_TYPE.__name__ == "Hashable"  # plumpy's


# -- the TypedDicts name the keys the worker sends ---------------------------------------------------------------
def test_the_typed_dicts_hold_every_key_a_worker_sends() -> None:
    comm = process_comms.connect()  # the embedded back end: no broker needed
    worker = process_comms.Worker(communicator=comm, persister=InMemoryPersister())
    try:
        with worker:
            ctl = process_comms.RemoteProcessThreadController(comm)
            pid = ctl.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=True).result(T)
            assert ctl.wait_for_process(pid, T).result(T) == "finished"
            got_status: ProcessStatus = ctl.get_status(pid).result(T)
            record: ProcessRecord = ctl.get_process(pid).result(T)
            page: ProcessPage = ctl.list_processes_page().result(T)
            summaries: list[ProcessSummary] = list(ctl.list_processes().result(T))
            workers: list[WorkerInfo] = ctl.list_workers(within=0.5).result(T)
    finally:
        comm.close()
    assert set(got_status) <= _keys(ProcessStatus), set(got_status) - _keys(ProcessStatus)
    assert got_status["state_name"] == "finished" and got_status["outputs"] == {"sum": 3}
    assert set(record) <= _keys(ProcessRecord), set(record) - _keys(ProcessRecord)
    assert set(page) <= _keys(ProcessPage) and page["processes"]
    for row in [*page["processes"], *summaries]:
        assert set(row) <= _keys(ProcessSummary), set(row) - _keys(ProcessSummary)
    assert set(_records.SUMMARY_KEYS) <= _keys(ProcessSummary)
    assert len(workers) == 1 and set(workers[0]) == _keys(WorkerInfo), set(workers[0]) ^ _keys(WorkerInfo)


def test_a_status_from_a_record_reads_only_the_keys_a_worker_hands_it() -> None:
    """A worker makes an ended process's status from ``STATUS_RECORD_KEYS`` alone (worker/process.py): a key that
    ``status_of_record`` came to read without being named there would be missing from every such status."""
    read: set[str] = set()

    class Watched(dict[str, object]):
        def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
            read.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> object:
            read.add(key)
            return super().__getitem__(key)

    for state in ("finished", "excepted", "killed"):
        record = {key: f"<{key}>" for key in (*messages.STATUS_RECORD_KEYS, "inputs", "history", "log")}
        status.status_of_record(Watched({**record, "state_name": state, "exception": {"type": "E"}}))
    assert read and read <= set(messages.STATUS_RECORD_KEYS), read - set(messages.STATUS_RECORD_KEYS)


def test_a_status_from_a_record_has_the_typed_keys() -> None:
    record = {"pid": 1, "class": "m:C", "state_name": "excepted", "exception": {"type": "E", "message": "m"}}
    made = status.status_of_record({**record, "source": "store", "source_reason": "none up"})
    assert set(made) <= _keys(ProcessStatus)
    assert set(status.lost_record(record, "gone", 2.0)) <= _keys(ProcessRecord)
