"""Wire extensions between two ends of ours (wire/messages.py), and kiwipy's wire where a peer is not ours.

A raw pika spy bound with ``#`` to both exchanges sees every task, reply and broadcast: our controller's task
says it wants no ``pending`` reply and gets only the final one, a kiwipy client's task gets the ``pending``
reply as before; our broadcasts carry subject and sender in headers that kiwipy ignores, and a communicator
of ours drops a broadcast that no local subscriber wants without decoding it.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kiwipy.rmq
import pika
import plumpy  # noqa: F401  - registers !uuid on PyYAML's loaders, as every plumpy peer has it
import pytest
import yaml

import process_comms
from process_comms.transports.rmq._connection import DeliveryFilter
from process_comms.wire import messages as extensions  # our AMQP header extensions live in messages
from process_comms.wire.codec import YamlCodec
from process_comms.wire.messages import create_launch_body
from tests import procs
from tests.conftest import BROKER_URL, delete_broker_objects, rabbitmqctl

T = 10.0


class CountingCodec(YamlCodec):
    """The default codec, counting what it decodes (the broadcasts a communicator did not drop)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded: list[Any] = []

    def decode(self, data: bytes | str) -> Any:
        value = super().decode(data)
        self.decoded.append(value)
        return value


class Spy:
    """A raw pika queue bound with ``#`` to both exchanges: every message that travels, in order."""

    def __init__(self, names: dict[str, str]) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for exchange in (names["message_exchange"], names["task_exchange"]):
            self.channel.queue_bind(self.queue, exchange, "#")
        self.captured: list[tuple[str, str, Any, Any]] = []

    def drain(self) -> list[tuple[str, str, Any, Any]]:
        while True:
            method, props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return self.captured
            self.captured.append((method.exchange, method.routing_key, props, yaml.load(body, Loader=yaml.FullLoader)))

    def replies_to(self, correlation_id: str, until: Any, timeout: float = T) -> list[Any]:
        """The bodies of the replies with ``correlation_id``, once ``until(bodies)`` holds (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            bodies = [b for _, key, p, b in self.drain() if p.correlation_id == correlation_id and "-reply-" in key]
            if until(bodies) or time.monotonic() > deadline:
                return bodies
            self.connection.sleep(0.02)


@pytest.fixture
def worker(broker_url: str, names: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Our worker (a ProcessLauncher on a communicator of its own), a spy on the wire, and our client."""
    made: list[Any] = []
    server = process_comms.connect(broker_url, testing_mode=False, **names)
    made.append(server)
    launcher = process_comms.ProcessLauncher(persister=process_comms.InMemoryPersister())
    server.add_task_subscriber(launcher)
    spy = Spy(names)
    client = process_comms.connect(broker_url, testing_mode=False, **names)
    made.append(client)
    try:
        yield {"server": server, "launcher": launcher, "spy": spy, "client": client, "made": made}
    finally:
        launcher.close()
        for comm in made:
            comm.close()
        spy.connection.close()
        prefix = names["task_queue"].rsplit(".process.queue", 1)[0]
        delete_broker_objects(prefix)


def test_our_controller_gets_no_pending_reply(worker: dict[str, Any]) -> None:
    controller = process_comms.RemoteProcessThreadController(worker["client"])
    result = controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T)
    assert result == {"sum": 3}
    spy: Spy = worker["spy"]
    (task_props,) = [p for _, key, p, b in spy.drain() if isinstance(b, tuple) and b[0].get("task") == "launch"]
    assert task_props.headers == {extensions.NO_PENDING: True}
    replies = spy.replies_to(task_props.correlation_id, lambda bodies: any("result" in b for b in bodies))
    assert [set(b) - {"host"} for b in replies] == [{"result"}]  # the final reply only: no 'pending' before it


def test_kiwipy_client_still_gets_the_pending_reply(worker: dict[str, Any], names: dict[str, str]) -> None:
    kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, testing_mode=False, **names)
    try:
        body = create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 2, "b": 3}}, nowait=False)
        future = kiwi.task_send(body)
        level = future.result(T)
        assert isinstance(level, kiwipy.Future)  # one level for the 'pending' reply, as kiwipy's protocol
        assert level.result(T) == {"sum": 5}
    finally:
        kiwi.close()
    spy: Spy = worker["spy"]
    (task_props,) = [p for _, key, p, b in spy.drain() if isinstance(b, tuple) and b[0].get("task") == "launch"]
    assert not task_props.headers  # kiwipy's wire: an empty table
    replies = spy.replies_to(task_props.correlation_id, lambda bodies: any("result" in b for b in bodies))
    assert [set(b) - {"host"} for b in replies] == [{"pending"}, {"result"}]


def test_our_kiwipy_mode_facade_still_gets_the_pending_reply(worker: dict[str, Any], names: dict[str, str]) -> None:
    """Our kiwipy-mode facade nests a future per ``pending`` reply: it must not ask the worker to skip it."""
    comm = process_comms.connect(BROKER_URL, testing_mode=False, api="kiwipy", **names)
    worker["made"].append(comm)
    body = create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 4, "b": 5}}, nowait=False)
    level = comm.task_send(body).result(T)
    assert isinstance(level, concurrent.futures.Future)  # one level for the 'pending' reply
    assert level.result(T) == {"sum": 9}


def test_our_broadcasts_carry_subject_and_sender_and_decode_as_before(worker: dict[str, Any]) -> None:
    controller = process_comms.RemoteProcessThreadController(worker["client"])
    pid = controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 1}}, nowait=True).result(T)
    spy: Spy = worker["spy"]
    deadline = time.monotonic() + T
    while True:
        broadcasts = [(p, b) for _, key, p, b in spy.drain() if key == "[broadcast]" and b["sender"] == pid]
        if any(b["subject"].endswith(".finished") for _, b in broadcasts) or time.monotonic() > deadline:
            break
        spy.connection.sleep(0.02)
    assert len(broadcasts) >= 2
    for props, envelope in broadcasts:
        assert set(envelope) == {"body", "sender", "subject", "correlation_id"}  # kiwipy's envelope, unchanged
        assert props.headers[extensions.SUBJECT] == envelope["subject"]
        assert props.headers[extensions.SENDER] == str(pid)
        assert extensions.broadcast_unwanted(props.headers, []) is True  # the headers rebuild subject and sender


def test_unwanted_broadcasts_are_dropped_before_decoding(broker_url: str, names: dict[str, str]) -> None:
    codec = CountingCodec()
    listener = process_comms.connect(broker_url, testing_mode=False, codec=codec, **names)
    sender = process_comms.connect(broker_url, testing_mode=False, **names)
    kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, testing_mode=False, **names)
    got: list[Any] = []
    seen = threading.Event()

    def on_wanted(_comm: Any, body: Any, _sender: Any, subject: Any, _cid: Any) -> None:
        got.append((subject, body))
        if body == "last":
            seen.set()

    try:
        listener.add_broadcast_subscriber(process_comms.BroadcastFilter(on_wanted, subject="wanted"))
        for i in range(5):
            sender.broadcast_send(i, sender="me", subject="unwanted").result(T)
        sender.broadcast_send("ours", sender="me", subject="wanted").result(T)
        kiwi.broadcast_send("kiwipy", sender="them", subject="unwanted")  # no headers: decoded as ever
        kiwi.broadcast_send("last", sender="them", subject="wanted")
        assert seen.wait(T)
    finally:
        for comm in (listener, sender):
            comm.close()
        kiwi.close()
    assert got == [("wanted", "ours"), ("wanted", "last")]
    decoded = [m.get("body") for m in codec.decoded if isinstance(m, dict) and "subject" in m]
    assert decoded == ["ours", "kiwipy", "last"]  # our five unwanted ones were never decoded


def test_own_broadcasts_are_dropped_when_no_subscriber_wants_them(broker_url: str, names: dict[str, str]) -> None:
    """A worker's launcher wants play/pause/kill only: its processes' state broadcasts come back undecoded."""
    codec = CountingCodec()
    server = process_comms.connect(broker_url, testing_mode=False, codec=codec, **names)
    client = process_comms.connect(broker_url, testing_mode=False, **names)
    launcher = process_comms.ProcessLauncher(persister=process_comms.InMemoryPersister())
    try:
        server.add_task_subscriber(launcher)
        controller = process_comms.RemoteProcessThreadController(client)
        for _ in range(3):
            assert controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {
                "sum": 3
            }
        pid = controller.launch_process(procs.Waiter, nowait=True).result(T)
        controller.pause_all(None)  # a broadcast the launcher wants: decoded and acted on
        deadline = time.monotonic() + T
        while not controller.get_status(pid).result(T)["paused"]:
            assert time.monotonic() < deadline, "the pause broadcast did not reach the process"
            time.sleep(0.02)
        assert controller.kill_process(pid).result(T) is True
    finally:
        launcher.close()
        for comm in (server, client):
            comm.close()
    subjects = [m["subject"] for m in codec.decoded if isinstance(m, dict) and "subject" in m and "body" in m]
    assert subjects == ["pause"]  # none of the processes' own state_changed broadcasts


def test_unwanted_broadcasts_are_dropped_beneath_aio_pika_again_after_a_reconnect(
    broker_url: str, names: dict[str, str]
) -> None:
    """The filter in front of aio-pika's consumer (rmq/_connection.py ``filter_deliveries``) is back on the channel
    aio-pika consumes on after a reconnect; wanted broadcasts arrive, unwanted ones are never decoded."""
    codec = CountingCodec()
    listener = process_comms.connect(broker_url, testing_mode=False, codec=codec, **names)
    sender = process_comms.connect(broker_url, testing_mode=False, **names)
    got: list[Any] = []

    def on_wanted(_comm: Any, body: Any, _sender: Any, _subject: Any, _cid: Any) -> None:
        got.append(body)

    async def filtered() -> bool:
        core = listener.core  # type: ignore[attr-defined]
        channel = await core.connection.sub_channel.get_underlay_channel()
        return any(isinstance(c, DeliveryFilter) for c in channel.consumers.values())

    def delivered(body: str) -> None:
        deadline = time.monotonic() + 30
        while body not in got:  # sent again until it arrives: the listener may still be reconnecting
            assert time.monotonic() < deadline, f"{body!r} never arrived"
            try:
                sender.broadcast_send(body, sender="me", subject="wanted").result(T)
            except (process_comms.ConnectionLost, process_comms.BrokerUnavailable):
                pass  # the sender is reconnecting too
            time.sleep(0.1)

    try:
        listener.add_broadcast_subscriber(process_comms.BroadcastFilter(on_wanted, subject="wanted"))
        delivered("before")
        assert listener.submit(filtered).result(T) is True
        closed = 0
        for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
            name, _, props = line.partition("\t")
            if f":{os.getpid()}" in props and "process_comms" in props:
                rabbitmqctl("close_connection", name, "test: the delivery filter comes back")
                closed += 1
        assert closed >= 2
        delivered("after")
        assert listener.submit(filtered).result(T) is True
        for i in range(5):
            sender.broadcast_send(i, sender="me", subject="unwanted").result(T)
        delivered("last")
    finally:
        for comm in (listener, sender):
            comm.close()
    decoded = {m.get("body") for m in codec.decoded if isinstance(m, dict) and "subject" in m}
    assert decoded == {"before", "after", "last"}  # the unwanted ones were never decoded


@pytest.mark.parametrize("sender", [None, "a-worker", 42, uuid.uuid4()])
def test_broadcast_headers_rebuild_subject_and_sender_exactly(sender: Any) -> None:
    headers = extensions.broadcast_headers("state_changed.running.finished", sender)
    assert extensions._routing(headers) == ("state_changed.running.finished", sender)
    wants_other = process_comms.BroadcastFilter(lambda *_: None, subject="pause")
    wants_it = process_comms.BroadcastFilter(lambda *_: None, subject="state_changed.*")
    assert extensions.broadcast_unwanted(headers, [wants_other]) is True
    assert extensions.broadcast_unwanted(headers, [wants_other, wants_it]) is False
    assert extensions.broadcast_unwanted(headers, [wants_other, lambda *_: None]) is False  # no filter: wants all
    if sender is not None:
        same_sender = process_comms.BroadcastFilter(lambda *_: None, sender=sender)
        assert extensions.broadcast_unwanted(headers, [same_sender]) is False


def test_values_a_header_cannot_carry_exactly_get_no_headers() -> None:
    assert extensions.broadcast_headers(("a", "tuple"), None) == {}
    assert extensions.broadcast_headers("s", 1.5) == {}
    assert extensions.broadcast_unwanted({}, []) is False  # kiwipy's broadcast: always decoded
    assert extensions.wants_pending({}) and extensions.wants_pending(None)
    assert not extensions.wants_pending(extensions.task_headers(wants_pending=False))


def test_routes_bound_without_bind_ok_are_in_place_before_the_pid_is_named(worker: dict[str, Any]) -> None:
    """The first route bind waits for bind-ok, later ones go on the reply channel without it (rmq/_connection.py):
    whoever learns a pid from the launch's reply can reach it at once, and the route goes when it ends."""
    controller = process_comms.RemoteProcessThreadController(worker["client"])
    pids = []
    for _ in range(20):
        pid = controller.launch_process(procs.Waiter, nowait=True).result(T)
        assert controller.get_status(pid).result(T)["state"]  # routable at once: no ProcessUnreachable
        pids.append(pid)
    assert worker["server"].core._nowait_binds is True
    for pid in pids:
        assert controller.kill_process(pid).result(T) is True
    keys = {f"[rpc].{pid}" for pid in pids}
    deadline = time.monotonic() + 30
    while True:  # the routes go with the processes (the robust queue forgot the bindings it was told of)
        listed = rabbitmqctl("list_bindings", "source_name", "routing_key")
        if not keys & {line.split("\t")[-1] for line in listed.splitlines()}:
            break
        assert time.monotonic() < deadline, "routes still bound after their processes ended"
        time.sleep(0.2)
    rpc_queue = worker["server"].core._rpc_queue
    assert not keys & {key for (_, key) in rpc_queue._bindings}


def test_a_communicator_reaches_its_own_routes_bound_without_bind_ok_at_once(
    broker_url: str, names: dict[str, str]
) -> None:
    """A request from the communicator itself goes on another channel than the route's nowait bind and may overtake
    it: it is sent again once the broker has handled the bind (rmq/_connection.py ``barrier``), so a route answers
    as soon as add_rpc_subscriber returned, as kiwipy's does."""
    comm = process_comms.connect(broker_url, testing_mode=False, **names)
    try:
        comm.add_rpc_subscriber(lambda _comm, msg: msg, "first")  # waits for bind-ok: the later ones do not
        for i in range(100):
            comm.add_rpc_subscriber(lambda _comm, msg: msg, f"route-{i}")
            assert comm.rpc_send(f"route-{i}", i).result(T) == i
        assert comm.core._nowait_binds is True  # type: ignore[attr-defined]
    finally:
        comm.close()


def test_routes_bound_without_bind_ok_come_back_after_a_reconnect(worker: dict[str, Any]) -> None:
    """aio-pika's robust queue re-binds what it was told of: a route bound without bind-ok survives a forced close."""
    controller = process_comms.RemoteProcessThreadController(worker["client"])
    pids = [controller.launch_process(procs.Waiter, nowait=True).result(T) for _ in range(3)]
    assert worker["server"].core._nowait_binds is True  # the second and third went without bind-ok
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        name, _, props = line.partition("\t")
        if f":{os.getpid()}" in props and "process_comms" in props:
            rabbitmqctl("close_connection", name, "test: routes bound without bind-ok come back")
            closed += 1
    assert closed >= 2
    deadline = time.monotonic() + 30
    for pid in pids:
        while True:
            try:
                assert controller.get_status(pid, timeout=2).result(5)["state"]
                break
            except (process_comms.ProcessUnreachable, process_comms.TimeoutError, process_comms.ConnectionLost):
                assert time.monotonic() < deadline, f"{pid} not reachable after the reconnect"
                time.sleep(0.1)
    for pid in pids:
        assert controller.kill_process(pid).result(T) is True
