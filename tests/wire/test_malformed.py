"""Malformed messages are refused with one clear error and never crash a worker or kill a process.

The "Bad input" rules of RELIABILITY.md for recursive anchors, string flags and pause texts:
a self-referencing YAML alias is a ``DecodeError``; wire flags must be booleans (``wire_bool``); a pause
text must be a str or None, refused at the caller and at the worker; a checkpoint that cannot be saved
is reported and the process keeps running. The broker tests use a raw pika peer against a real worker
(a ``ProcessLauncher`` in this interpreter, persisted in memory).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

import process_comms
from process_comms import (
    InMemoryPersister,
    PersistenceError,
    Process,
    ProcessLauncher,
    RemoteProcessController,
    RemoteProcessThreadController,
    ThreadCommunicator,
)
from process_comms.errors import InvalidTask
from process_comms.wire import codec as flowyaml  # the flow-YAML fast path lives in the codec
from process_comms.wire.codec import JsonCodec, YamlCodec
from process_comms.wire.messages import state_from_subject, wire_bool, wire_text
from tests import procs
from tests.conftest import rmq_options
from tests.waiting import wait_until

T = 15  # seconds: the bound of every wait in this module

SELF_REFERENCING = [
    b"a: &a [*a]",
    b"&a {x: *a}",
    b"&a [[[*a]]]",
    b"a: &a {b: [1, {c: *a}]}",
    b"&a [1, {k: [2, *a]}]",
    b"outer:\n  inner: &a\n    - x\n    - *a\n",
    b"!!python/tuple [&a {task: launch, args: *a}, false]",
]


# -- the codec (no broker) ------------------------------------------------------------------------


@pytest.mark.parametrize("data", SELF_REFERENCING)
def test_a_self_referencing_alias_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(process_comms.DecodeError, match="refers to its own anchor"):
        YamlCodec().decode(data)
    with pytest.raises(process_comms.DecodeError, match="refers to its own anchor"):
        YamlCodec().decode(data.decode())


def test_shared_and_deeply_nested_aliases_still_decode() -> None:
    codec = YamlCodec()
    assert codec.decode(b"- &a [1]\n- *a\n") == [[1], [1]]
    assert codec.decode(b"a: &x {k: 1}\nb: *x\nc: [*x, *x]") == {"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}] * 2}
    depth = 999  # the deepest flow nesting the YAML parser accepts: measured without recursion
    value = codec.decode(b"a: &x 1\nb: " + b"[" * depth + b"*x" + b"]" * depth)
    value = value["b"]
    for _ in range(depth):
        value = value[0]
    assert value == 1


def test_a_self_referencing_value_is_an_encode_error_in_both_codecs() -> None:
    loop: list[Any] = []
    loop.append(loop)
    inner: dict[str, Any] = {}
    inner["x"] = [inner]
    for value in (loop, inner, {"args": loop}):
        with pytest.raises(flowyaml.TooDeep):  # the writer stops at its depth limit, it does not recurse on
            flowyaml.dump(value)
        with pytest.raises(process_comms.EncodeError, match="contains itself"):
            YamlCodec().encode(value)
        with pytest.raises(process_comms.EncodeError):
            JsonCodec().encode(value)


def test_the_flow_yaml_fast_path_leaves_anchors_to_the_yaml_loader() -> None:
    for data in SELF_REFERENCING:
        assert flowyaml.load(data) is flowyaml.NOT_FLOW
    with pytest.raises(process_comms.DecodeError):
        JsonCodec().decode(b"[" * 100_000)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), (True, True), (False, False), ("missing", True)], ids=str
)
def test_wire_bool_reads_only_booleans(value: Any, expected: bool) -> None:
    body = {} if value == "missing" else {"nowait": value}
    assert wire_bool(body, "nowait", True) is expected


@pytest.mark.parametrize("value", ["false", "no", "", 0, 1, 1.0, [], {}], ids=repr)
def test_wire_bool_refuses_anything_else_naming_the_key_and_the_type(value: Any) -> None:
    with pytest.raises(InvalidTask, match=rf"'nowait' must be true, false or null, not {type(value).__name__}"):
        wire_bool({"nowait": value}, "nowait", False)


NOT_TEXT = [float("nan"), datetime.date(2024, 1, 1), ("a", "b"), {1: "a"}, b"bytes", 3, {"a"}]


@pytest.mark.parametrize("text", NOT_TEXT, ids=repr)
def test_wire_text_refuses_what_is_not_a_string(text: Any) -> None:
    assert wire_text("paused by me") == "paused by me"
    assert wire_text(None) is None
    with pytest.raises(InvalidTask, match="must be a string or None"):
        wire_text(text)
    with pytest.raises(process_comms.EncodeError, match="pause text must be a string or None"):
        wire_text(text, "pause text", process_comms.EncodeError)


# -- a worker on the real broker, and a raw peer ---------------------------------------------------


class FlakyPersister(InMemoryPersister):
    """The in-memory store, which fails every save while ``failing`` is set (a store that went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()

    def save_bundle(self, pid: Any, bundle: dict[str, Any], tag: str | None = None) -> None:
        if self.failing.is_set():
            raise PersistenceError("the checkpoint store is unavailable")
        super().save_bundle(pid, bundle, tag)


class Saver(Process):
    """Checkpoints its step count again and again until killed (a persisted process with a live record)."""

    async def run(self) -> dict[str, Any]:
        step = int(self.progress.get("step", 0))
        while True:
            step += 1
            await self.checkpoint(step=step)
            await asyncio.sleep(0.005)  # the process's own pace, not a synchronisation of the test


class RawPeer:
    """A plain pika client speaking kiwipy's wire format, with reply queues bound as kiwipy binds them."""

    def __init__(self, url: str, names: dict[str, str]) -> None:
        self.names = names
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.replies: dict[str, list[Any]] = {}
        self.reply_queues: dict[str, str] = {}
        for kind in ("message", "task"):
            exchange = names[f"{kind}_exchange"]
            self.ch.exchange_declare(exchange, "topic", durable=False, auto_delete=True)  # as in testing mode
            queue = f"{exchange}-reply-{uuid.uuid4()}"
            self.ch.queue_declare(queue, exclusive=True, arguments={"x-expires": 60000})
            self.ch.queue_bind(queue, exchange, routing_key=queue)
            self.ch.basic_consume(queue, self._on_reply, auto_ack=True)
            self.reply_queues[kind] = queue

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        self.replies.setdefault(props.correlation_id, []).append(YamlCodec().decode(body))

    def publish(self, kind: str, routing_key: str, body: bytes) -> str:
        cid = str(uuid.uuid4())
        props = pika.BasicProperties(correlation_id=cid, reply_to=self.reply_queues[kind], delivery_mode=1)
        self.ch.basic_publish(self.names[f"{kind}_exchange"], routing_key, body, props)
        return cid

    def task(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """Publish a raw task body; return its correlation id and its final reply."""
        cid = self.publish("task", self.names["task_queue"], body)
        return cid, self.final(cid)

    def rpc(self, pid: Any, body: bytes) -> tuple[str, dict[str, Any]]:
        """Publish a raw RPC body to ``pid``'s route; return its correlation id and its final reply."""
        cid = self.publish("message", f"[rpc].{pid}", body)
        return cid, self.final(cid)

    def broadcast(self, body: bytes) -> None:
        self.publish("message", "[broadcast]", body)

    def final(self, cid: str) -> dict[str, Any]:
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            self.conn.process_data_events(0.05)
            for reply in self.replies.get(cid, []):
                if isinstance(reply, dict) and "pending" not in reply:
                    return reply
        raise AssertionError(f"no final reply within {T} s (replies: {self.replies.get(cid)})")

    def final_replies(self, cid: str) -> list[Any]:
        return [r for r in self.replies.get(cid, []) if not (isinstance(r, dict) and "pending" in r)]

    def close(self) -> None:
        self.conn.close()


class States:
    """Every ``state_changed`` broadcast a communicator sees, as ``(sender, state)`` in arrival order."""

    def __init__(self, comm: ThreadCommunicator) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str]] = []
        comm.add_broadcast_subscriber(self._receive)

    def _receive(self, _comm: Any, _body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        state = state_from_subject(subject)
        if state is not None:
            with self._lock:
                self._seen.append((str(sender), state))

    def senders(self) -> set[str]:
        with self._lock:
            return {sender for sender, _ in self._seen}

    def saw(self, pid: Any, state: str) -> bool:
        with self._lock:
            return (str(pid), state) in self._seen


@dataclass
class Rig:
    launcher: ProcessLauncher
    persister: FlakyPersister
    client: ThreadCommunicator
    ctl: RemoteProcessThreadController
    peer: RawPeer
    states: States


@pytest.fixture
def rig(broker_url: str, names: dict[str, str]) -> Iterator[Rig]:
    """A worker with a persister, a client with a thread controller, and a raw peer, on unique names."""
    persister = FlakyPersister()
    worker = process_comms.connect(broker_url, **rmq_options(names))
    launcher = ProcessLauncher(persister=persister)
    client = process_comms.connect(broker_url, **rmq_options(names))
    peer: RawPeer | None = None
    try:
        worker.add_task_subscriber(launcher)
        states = States(client)
        peer = RawPeer(broker_url, names)
        yield Rig(launcher, persister, client, RemoteProcessThreadController(client), peer, states)
    finally:
        if peer is not None:
            peer.close()
        client.close()
        worker.close()
        launcher.close()


def encode(obj: Any) -> bytes:
    return YamlCodec().encode(obj)


def launch_saver(rig: Rig) -> uuid.UUID:
    """Launch a persisted Saver (its route exists on return) and wait for its first stored checkpoint."""
    pid = rig.ctl.launch_process(Saver, init_kwargs={"inputs": {}}, persist=True, nowait=True).result(T)
    wait_until(lambda: stored_step(rig, pid) >= 1, T, "the first checkpoint", interval=0.02)
    return pid  # type: ignore[no-any-return]


def stored_step(rig: Rig, pid: Any) -> int:
    try:
        return int(rig.persister.load_checkpoint(pid)["progress"].get("step", 0))
    except PersistenceError:
        return 0


def assert_alive_and_unpaused(rig: Rig, pid: Any) -> None:
    status = rig.ctl.get_status(pid).result(T)
    assert status["state_name"] == "running" and status["paused"] is False, status
    step = stored_step(rig, pid)
    wait_until(
        lambda: stored_step(rig, pid) > step, T, "a later checkpoint", interval=0.02
    )  # it still runs and still saves


def kill(rig: Rig, pid: Any) -> None:
    assert rig.ctl.kill_process(pid).result(T) is True
    wait_until(
        lambda: rig.persister.load_checkpoint(pid)["state"] == "killed", T, "the final checkpoint", interval=0.02
    )


# -- recursive anchors on the real broker ----------------------------------------------------------


@pytest.mark.parametrize("body", SELF_REFERENCING[:3])
def test_a_self_referencing_rpc_gets_one_error_reply_and_the_worker_keeps_working(rig: Rig, body: bytes) -> None:
    pid = rig.ctl.launch_process(procs.Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
    cid, reply = rig.peer.rpc(pid, body)
    assert reply["error_type"] == "DecodeError" and "refers to its own anchor" in reply["exception"], reply
    _, status = rig.peer.rpc(pid, encode({"intent": "status", "message": None}))  # same route, handled after
    assert status["result"]["state_name"] in ("running", "waiting"), status
    assert len(rig.peer.final_replies(cid)) == 1
    assert rig.ctl.kill_process(pid).result(T) is True


def test_a_self_referencing_task_gets_one_error_reply_and_the_worker_keeps_working(rig: Rig) -> None:
    cid, reply = rig.peer.task(b"!!python/tuple [&a {task: launch, args: {init_args: *a}}, false]")
    assert reply["error_type"] == "DecodeError" and "refers to its own anchor" in reply["exception"], reply
    add = {"inputs": {"a": 2, "b": 3}}
    assert rig.ctl.launch_process(procs.Add, init_kwargs=add).result(T) == {"sum": 5}
    assert len(rig.peer.final_replies(cid)) == 1  # settled once: a redelivery would have replied again


# -- wire booleans ---------------------------------------------------------------------------------


def _launch_body(**args: Any) -> dict[str, Any]:
    base = {"process_class": "tests.procs:Add", "persist": False, "nowait": False, "init_args": None}
    return {"task": "launch", "args": {**base, "init_kwargs": {"inputs": {"a": 1, "b": 2}}, **args}}


BAD_FLAG_TASKS = {
    "launch nowait 'false'": (_launch_body(nowait="false"), "'nowait'", "str"),
    "launch persist 'no'": (_launch_body(persist="no"), "'persist'", "str"),
    "launch nowait 1": (_launch_body(nowait=1), "'nowait'", "int"),
    "launch persist 0": (_launch_body(persist=0), "'persist'", "int"),
    "create persist 'true'": (
        {"task": "create", "args": {**_launch_body()["args"], "persist": "true"}},
        "'persist'",
        "str",
    ),
    "continue nowait 'yes'": (
        {"task": "continue", "args": {"pid": str(uuid.uuid4()), "nowait": "yes"}},
        "'nowait'",
        "str",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAG_TASKS))
def test_a_task_flag_that_is_not_a_boolean_is_refused_and_nothing_runs(rig: Rig, case: str) -> None:
    task, key, type_name = BAD_FLAG_TASKS[case]
    cid, reply = rig.peer.task(encode((task, False)))
    assert reply["error_type"] == "InvalidTask", reply
    assert key in reply["exception"] and type_name in reply["exception"], reply
    assert rig.launcher.processes == {}
    # a good launch afterwards: the worker still works, and the only process it ever broadcast for is that one
    good = uuid.uuid4()
    add = {"inputs": {"a": 2, "b": 3}, "pid": good}
    assert rig.ctl.launch_process(procs.Add, init_kwargs=add).result(T) == {"sum": 5}
    wait_until(lambda: rig.states.saw(good, "finished"), T, "the good process's final broadcast", interval=0.02)
    assert rig.states.senders() == {str(good)}
    assert len(rig.peer.final_replies(cid)) == 1


def test_missing_or_null_task_flags_keep_their_defaults(rig: Rig) -> None:
    body = _launch_body()
    del body["args"]["nowait"]
    body["args"]["persist"] = None
    _, reply = rig.peer.task(encode((body, False)))
    assert reply.get("result") == {"sum": 3}, reply  # the outputs: nowait and persist kept meaning false


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b"{intent: pause, message: null, release: 'false'}", "'release'"),
        (b"{intent: pause, message: null, release: 1}", "'release'"),
        (b"{intent: kill, message: null, force_kill: 'no'}", "'force_kill'"),
    ],
)
def test_an_rpc_flag_that_is_not_a_boolean_is_refused_and_the_process_is_untouched(
    rig: Rig, body: bytes, key: str
) -> None:
    pid = launch_saver(rig)
    _, reply = rig.peer.rpc(pid, body)
    assert reply["error_type"] == "InvalidTask" and key in reply["exception"], reply
    assert_alive_and_unpaused(rig, pid)
    assert str(pid) in rig.launcher.processes
    kill(rig, pid)


# -- pause text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", NOT_TEXT, ids=repr)
def test_a_pause_text_that_is_not_a_string_is_refused_at_the_caller(rig: Rig, text: Any) -> None:
    pid = launch_saver(rig)
    with pytest.raises(process_comms.EncodeError, match="pause text must be a string or None"):
        rig.ctl.pause_process(pid, text).result(T)
    with pytest.raises(process_comms.EncodeError, match="pause text"):
        rig.ctl.pause_process(pid, text, release=True).result(T)
    fut = rig.ctl.pause_all(text, answers_within=0.1)
    assert fut is not None
    with pytest.raises(process_comms.EncodeError, match="pause text"):
        fut.result(T)

    async def direct() -> None:
        ctl = RemoteProcessController(rig.client)
        with pytest.raises(process_comms.EncodeError):
            await ctl.pause_process(pid, text)
        with pytest.raises(process_comms.EncodeError):
            await ctl.pause_all(text)

    asyncio.run(direct())
    assert_alive_and_unpaused(rig, pid)
    kill(rig, pid)


RAW_TEXTS = {
    "nan": b".nan",
    "date": b"2024-01-01",
    "binary": b"!!binary aGVsbG8=",
    "set": b"!!set {a: null, b: null}",
    "tuple": b"!!python/tuple [a, b]",
    "int-keyed mapping": b"{1: a}",
    "int": b"3",
}


@pytest.mark.parametrize("case", sorted(RAW_TEXTS))
@pytest.mark.parametrize("release", [False, True])
def test_a_raw_pause_with_a_text_that_is_not_a_string_is_refused_and_the_process_lives(
    rig: Rig, case: str, release: bool
) -> None:
    pid = launch_saver(rig)
    extra = b", release: true" if release else b""
    _, reply = rig.peer.rpc(pid, b"{intent: pause, message: " + RAW_TEXTS[case] + extra + b"}")
    assert reply["error_type"] == "InvalidTask" and "must be a string or None" in reply["exception"], reply
    assert_alive_and_unpaused(rig, pid)
    assert rig.persister.load_checkpoint(pid)["state"] == "running"
    # a good pause still works
    assert rig.ctl.pause_process(pid, "held for a test").result(T) is True
    status = rig.ctl.get_status(pid).result(T)
    assert status["paused"] is True and status["status"] == "held for a test", status
    kill(rig, pid)


def test_a_raw_kill_with_a_text_that_is_not_a_string_is_refused(rig: Rig) -> None:
    pid = launch_saver(rig)
    _, reply = rig.peer.rpc(pid, b"{intent: kill, message: .nan, force_kill: false}")
    assert reply["error_type"] == "InvalidTask", reply
    assert_alive_and_unpaused(rig, pid)
    kill(rig, pid)


def test_a_pause_broadcast_with_a_text_that_is_not_a_string_is_dropped(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="process_comms.worker.launcher")
    pid = launch_saver(rig)
    envelope = b"{body: {intent: pause, message: .nan}, sender: null, subject: pause, correlation_id: null}"
    rig.peer.broadcast(envelope)
    wait_until(lambda: "dropped a pause broadcast" in caplog.text, T, "the worker to drop the broadcast", interval=0.02)
    assert_alive_and_unpaused(rig, pid)
    kill(rig, pid)


# -- a checkpoint that cannot be saved -------------------------------------------------------------


def test_a_failed_checkpoint_save_is_logged_and_the_process_keeps_running(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="process_comms.worker.process")
    pid = launch_saver(rig)
    rig.persister.failing.set()
    wait_until(lambda: "could not save a checkpoint" in caplog.text, T, "the failed save to be logged", interval=0.02)
    assert any(r.levelno == logging.ERROR for r in caplog.records if "could not save" in r.getMessage())
    status = rig.ctl.get_status(pid).result(T)  # still alive: before, it excepted with a "running" record
    assert status["state_name"] == "running", status
    rig.persister.failing.clear()
    assert_alive_and_unpaused(rig, pid)  # the store is back: its checkpoints are saved again
    kill(rig, pid)


def test_a_release_whose_checkpoint_fails_is_an_error_and_the_process_stays(rig: Rig) -> None:
    pid = launch_saver(rig)
    rig.persister.failing.set()
    with pytest.raises(process_comms.RemoteError, match="not released"):
        rig.ctl.pause_process(pid, "release me", release=True).result(T)
    status = rig.ctl.get_status(pid).result(T)
    assert status["paused"] is True and status["state_name"] == "running", status  # paused here, not lost
    assert str(pid) in rig.launcher.processes
    rig.persister.failing.clear()
    assert rig.ctl.play_process(pid).result(T) is True
    assert_alive_and_unpaused(rig, pid)
    kill(rig, pid)
