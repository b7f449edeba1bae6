"""A drop-in for plumpy and kiwipy users (issue 17): our controllers over every kind of kiwipy communicator,
plumpy's controllers over ours, and kiwipy's communicator semantics, on a real RabbitMQ.

The worker is ours in another OS process (``peers/pc_worker.py``), with AiiDA-style names per test; the
peers and name clean-up come from ``test_plumpy_compat.py``. Every wait is bounded by ``T``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kiwipy
import kiwipy.rmq
import plumpy
import pytest

import process_comms
from tests import procs
from tests.conftest import BROKER_URL
from tests.integration.peers import pc_procs
from tests.integration.test_plumpy_compat import (  # noqa: F401 - fixtures, used by name
    PLUMPY_STATUS_KEYS,
    Peer,
    T,
    _delete_declared,
    aiida_names,
    our_comm,
    pc_worker,
)

pytestmark = pytest.mark.broker


class ZmqLike(kiwipy.Communicator):  # type: ignore[misc]
    """A minimal communicator that behaves like aiida-core's ZeroMQ one (``aiida/brokers/zmq/communicator.py``).

    Its ``task_send`` resolves as soon as the broker stored the task, to a second future that resolves with
    the worker's reply; failed replies are bare ``Exception(text)``; a closed one raises ``RuntimeError``.
    The transport under it is a kiwipy ``RmqThreadCommunicator``.
    """

    def __init__(self, inner: kiwipy.rmq.RmqThreadCommunicator) -> None:
        self._inner = inner
        self._closed = False

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("Communicator is closed")

    @staticmethod
    def _bare(source: Any) -> concurrent.futures.Future[Any]:
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(fut: concurrent.futures.Future[Any]) -> None:
            if fut.exception() is not None:
                out.set_exception(Exception(str(fut.exception())))
            else:
                out.set_result(fut.result())

        plumpy.futures.unwrap_kiwi_future(source).add_done_callback(done)
        return out

    def task_send(self, task: Any, no_reply: bool = False) -> Any:
        self._ensure_open()
        sent = self._inner.task_send(task, no_reply)  # returns once the broker has the task
        if no_reply:
            return None
        stored: concurrent.futures.Future[Any] = concurrent.futures.Future()
        stored.set_result(self._bare(sent))  # resolved on storage: the reply is one level down
        return stored

    def rpc_send(self, recipient_id: Any, msg: Any) -> Any:
        self._ensure_open()
        return self._bare(self._inner.rpc_send(recipient_id, msg))

    def broadcast_send(self, body: Any, sender: Any = None, subject: Any = None, correlation_id: Any = None) -> bool:
        self._ensure_open()
        self._inner.broadcast_send(body, sender, subject, correlation_id)
        return True

    def add_broadcast_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._inner.add_broadcast_subscriber(subscriber, identifier)

    def remove_broadcast_subscriber(self, identifier: Any) -> None:
        self._inner.remove_broadcast_subscriber(identifier)

    def add_rpc_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._inner.add_rpc_subscriber(subscriber, identifier)

    def remove_rpc_subscriber(self, identifier: Any) -> None:
        self._inner.remove_rpc_subscriber(identifier)

    def add_task_subscriber(self, subscriber: Any, identifier: Any = None) -> Any:
        return self._inner.add_task_subscriber(subscriber, identifier)

    def remove_task_subscriber(self, identifier: Any) -> None:
        self._inner.remove_task_subscriber(identifier)

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._inner.close()


class LoopOnThread:
    """An asyncio loop running on a thread of its own (where kiwipy's asyncio communicator or plumpy's
    LoopCommunicator callbacks live), stopped at the end of the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-kiwipy-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(T)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(T)
        self.loop.close()


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> Peer:
    """Our worker in another OS process (``pc_worker`` of test_plumpy_compat.py)."""
    peer: Peer = request.getfixturevalue("pc_worker")
    return peer


KINDS = ["kiwipy-thread", "kiwipy-asyncio", "plumpy-loop", "zmq-like"]


@pytest.fixture
def foreign(request: pytest.FixtureRequest) -> Iterator[Callable[[str, dict[str, str]], Any]]:
    """Make a foreign communicator of a kind, on the given names; everything it made is closed after the test."""
    closers: list[Callable[[], None]] = []

    def make(kind: str, names: dict[str, str]) -> Any:
        if kind == "kiwipy-asyncio":
            loop = LoopOnThread()
            comm = loop.run(kiwipy.rmq.async_connect(connection_params={"url": BROKER_URL}, **names))
            closers.append(loop.stop)
            closers.append(lambda: loop.run(comm.disconnect()))
            return comm
        thread_comm = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, **names)
        closers.append(thread_comm.close)
        if kind == "plumpy-loop":
            loop = LoopOnThread()
            closers.append(loop.stop)
            return plumpy.wrap_communicator(thread_comm, loop.loop)
        if kind == "zmq-like":
            return ZmqLike(thread_comm)
        return thread_comm

    yield make
    for close in reversed(closers):
        try:
            close()
        except Exception:  # noqa: BLE001 - already closed by the test (the controller's close)
            pass


# -- 1. our controllers over any kiwipy communicator ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_our_thread_controller_over_a_kiwipy_communicator(kind: str, worker: Peer, foreign: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(foreign(kind, worker.names))

    launched = controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 2, "b": 3}})
    assert isinstance(launched, concurrent.futures.Future)  # returned at once: non-blocking submission
    assert launched.result(T) == {"sum": 5}  # flat, whatever the communicator's nesting
    pid = controller.launch_process(pc_procs.Idle, nowait=True).result(T)
    assert isinstance(pid, uuid.UUID)
    ended = controller.wait_for_process(pid, timeout=T, poll_interval=0.5)

    status = controller.get_status(pid).result(T)
    assert PLUMPY_STATUS_KEYS <= set(status) and status["paused"] is False
    assert controller.pause_process(pid, "held").result(T) is True
    assert controller.get_status(pid).result(T)["paused"] is True
    assert controller.play_process(pid).result(T) is True
    assert controller.kill_process(pid, "bye").result(T) is True
    assert ended.result(T) == "killed"  # through the state_changed broadcast (or the status poll)

    with pytest.raises(process_comms.RemoteError, match="always fails"):
        controller.launch_process(procs.Fails).result(T)
    with pytest.raises(process_comms.TimeoutError):  # a deadline over every communicator
        controller.launch_process(pc_procs.Idle, init_kwargs={"inputs": {"seconds": 30}}, timeout=0.5).result(T)
    if kind != "zmq-like":  # its replies carry text only: "unroutable" is a RemoteError there
        with pytest.raises(process_comms.ProcessUnreachable):
            controller.pause_process(uuid.uuid4()).result(T)
    controller.close()
    with pytest.raises(process_comms.CommunicatorClosed):
        controller.get_status(pid).result(T)


@pytest.mark.parametrize("kind", KINDS)
def test_our_async_controller_over_a_kiwipy_communicator(kind: str, worker: Peer, foreign: Any) -> None:
    comm = foreign(kind, worker.names)

    async def scenario() -> None:
        controller = process_comms.RemoteProcessController(comm)
        assert await controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 4, "b": 4}}) == {"sum": 8}
        pid = await controller.launch_process(pc_procs.Idle, nowait=True)
        status = await controller.get_status(pid)
        assert PLUMPY_STATUS_KEYS <= set(status)
        assert await controller.pause_process(pid) is True
        assert (await controller.get_status(pid))["paused"] is True
        assert await controller.play_process(pid) is True
        assert await controller.kill_process(pid) is True
        if kind != "zmq-like":
            with pytest.raises(process_comms.ProcessUnreachable):
                await controller.play_process(uuid.uuid4())
        # create (persisted in the worker's SQLite) then continue
        assert await controller.execute_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}) == {"sum": 3}
        with pytest.raises(process_comms.TimeoutError):
            await controller.launch_process(pc_procs.Idle, init_kwargs={"inputs": {"seconds": 30}}, timeout=0.5)

    if kind == "kiwipy-asyncio":  # on the communicator's own loop, as an asyncio kiwipy user runs it
        asyncio.run_coroutine_threadsafe(scenario(), comm.loop).result(6 * T)
    else:
        asyncio.run(asyncio.wait_for(scenario(), 6 * T))


# -- 2. plumpy's controllers over our communicator ---------------------------------------------------


def test_plumpy_async_controller_over_our_kiwipy_mode(worker: Peer) -> None:
    """plumpy awaits a fixed number of future levels (two for pause/play/kill and tasks): ``api="kiwipy"``
    nests one level per ``pending`` reply, as kiwipy does, so plumpy's own controllers work over ours."""
    comm = process_comms.connect(BROKER_URL, api="kiwipy", **worker.names)
    flat = process_comms.connect(BROKER_URL, **worker.names)

    async def scenario() -> None:
        controller = plumpy.RemoteProcessController(comm)
        assert await controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 2, "b": 2}}) == {"sum": 4}
        pid = await controller.launch_process(pc_procs.Idle, nowait=True)
        assert isinstance(pid, uuid.UUID)
        assert (await controller.get_status(pid))["paused"] is False
        assert await controller.pause_process(pid, "held") is True
        assert (await controller.get_status(pid))["paused"] is True
        assert await controller.play_process(pid) is True
        assert await controller.kill_process(pid) is True
        # our default, flat futures: plumpy's second await gets the value itself (documented in the README)
        other = await controller.launch_process(pc_procs.Idle, nowait=True)
        with pytest.raises(AssertionError, match=r"concurrent\.futures\.Future is expected, got True"):
            await plumpy.RemoteProcessController(flat).pause_process(other)
        assert await controller.kill_process(other) is True

    try:
        asyncio.run(asyncio.wait_for(scenario(), 6 * T))
        thread_controller = plumpy.RemoteProcessThreadController(comm)
        launched = thread_controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 1}})
        assert plumpy.futures.unwrap_kiwi_future(launched).result(T) == {"sum": 2}
    finally:
        comm.close()
        flat.close()


# -- 4. kiwipy's communicator semantics ---------------------------------------------------------------


def test_kiwipy_mode_blocking_sends(broker_url: str) -> None:
    names = aiida_names()
    seen: list[Any] = []
    got = threading.Event()
    with (
        process_comms.connect(broker_url, **names) as server,
        process_comms.connect(broker_url, api="kiwipy", **names) as client,
    ):

        def subscriber(_comm: Any, task: Any) -> Any:
            seen.append(task)
            got.set()
            return {"took": task}

        server.add_task_subscriber(subscriber)
        assert client.task_send({"n": 1}, no_reply=True) is None  # returned once the broker had it
        assert got.wait(T) and seen == [{"n": 1}]
        assert client.broadcast_send({"b": 1}, subject="s") is True  # a bool, not a future
        nested = client.task_send({"n": 2})
        assert isinstance(nested, concurrent.futures.Future)
        assert plumpy.futures.unwrap_kiwi_future(nested).result(T) == {"took": {"n": 2}}
    with pytest.raises(kiwipy.CommunicatorClosed):
        client.broadcast_send({"b": 2})
    with pytest.raises(process_comms.CommunicatorClosed):
        client.task_send({"n": 3}, no_reply=True)


@pytest.mark.parametrize("url", [None, "broker"])
def test_remove_unknown_task_subscriber_raises_value_error(url: str | None, broker_url: str) -> None:
    with process_comms.connect(None if url is None else broker_url, **({} if url is None else aiida_names())) as comm:
        with pytest.raises(ValueError, match="no task subscriber"):
            comm.remove_task_subscriber("nobody")
        comm.add_task_subscriber(lambda _comm, task: task, "s")
        comm.remove_task_subscriber("s")
        with pytest.raises(ValueError):
            comm.remove_task_subscriber("s")


def test_server_properties_close_callback_disconnect_and_queue_expires(broker_url: str) -> None:
    comm = process_comms.connect(broker_url, queue_expires=30_000, **aiida_names())
    assert comm.server_properties["product"] in ("RabbitMQ", b"RabbitMQ")
    closed = threading.Event()
    comm.add_close_callback(lambda *_args: closed.set())
    comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
    assert comm.core.rpc_queue is not None  # type: ignore[attr-defined]
    assert comm.core.rpc_queue.arguments["x-expires"] == 30_000  # type: ignore[attr-defined]
    assert comm.rpc_send("echo", 5).result(T) == 5
    comm.disconnect()
    assert comm.is_closed() and closed.wait(T)
    with pytest.raises(ValueError, match="queue_expires"):
        process_comms.RmqCommunicator(broker_url, queue_expires=0)


def test_task_queue_on_thread_and_asyncio_communicators(broker_url: str) -> None:
    names = aiida_names()
    with (
        process_comms.connect(broker_url, **names) as worker_comm,
        process_comms.connect(broker_url, **names) as client,
    ):
        queue = worker_comm.task_queue("gpu", prefetch_count=1)
        queue.add_task_subscriber(lambda _comm, task: task * 2, "doubler")
        assert client.task_queue("gpu").task_send(21).result(T) == 42
        assert client.task_send(1, queue="gpu").result(T) == 2  # the same queue as task_send(queue=)
        queue.remove_task_subscriber("doubler")
        with pytest.raises(ValueError):
            queue.remove_task_subscriber("doubler")

    async def on_asyncio() -> None:
        async with process_comms.RmqCommunicator(broker_url, **names) as comm:
            aqueue = await comm.task_queue("cpu", prefetch_count=2)
            await aqueue.add_task_subscriber(lambda _comm, task: task + 1, "inc")
            assert await aqueue.task_send(4) == 5
            assert await aqueue.task_send(0, no_reply=True) is None
            await comm.disconnect()
            assert comm.is_closed()

    asyncio.run(asyncio.wait_for(on_asyncio(), T))


def test_in_memory_persister_loader() -> None:
    class Aliasing(process_comms.DefaultObjectLoader):
        def identify_object(self, obj: Any) -> str:
            return "alias:" + super().identify_object(obj)

    persister = process_comms.InMemoryPersister(loader=Aliasing())
    proc = procs.Add(inputs={"a": 1, "b": 2})
    persister.save_checkpoint(proc)
    assert persister.load_checkpoint(proc.pid)["!!meta"]["class_name"] == "alias:tests.procs:Add"
    plain = process_comms.InMemoryPersister()
    plain.save_checkpoint(proc)
    assert plain.load_checkpoint(proc.pid)["!!meta"]["class_name"] == "tests.procs:Add"


# -- 5. plumpy's LoopCommunicator wiring: no lost wake-up --------------------------------------------


def _launch_through_loop_communicator(url: str | None, count: int) -> int:
    """Our launcher on a loop, subscribed through ``plumpy.wrap_communicator`` (AiiDA's daemon wiring), and
    the controller awaited on that same loop; the number of launches that missed their 2 s deadline."""
    loop = asyncio.new_event_loop()
    comm = process_comms.connect(url, **({} if url is None else aiida_names()))
    launcher = process_comms.ProcessLauncher(loop)
    try:
        plumpy.wrap_communicator(comm, loop).add_task_subscriber(launcher)
        controller = process_comms.RemoteProcessController(comm)

        async def launches() -> int:
            stalled = 0
            for _ in range(count):
                try:
                    await controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, timeout=2)
                except process_comms.TimeoutError:
                    stalled += 1
            return stalled

        return loop.run_until_complete(asyncio.wait_for(launches(), 120))
    finally:
        comm.close()
        launcher.close()
        loop.close()


def test_loop_communicator_launches_never_stall_embedded() -> None:
    assert _launch_through_loop_communicator(None, 1000) == 0


@pytest.mark.slow
def test_loop_communicator_launches_never_stall_rmq(broker_url: str) -> None:
    assert _launch_through_loop_communicator(broker_url, 1000) == 0
