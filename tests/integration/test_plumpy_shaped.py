"""The controllers' plumpy-shaped mode (``api="plumpy"``, process_comms/client/_plumpy.py) against plumpy's own.

The reference is plumpy 0.26's ``RemoteProcessThreadController`` and ``RemoteProcessController`` over kiwipy's
``RmqThreadCommunicator``, driving a plumpy worker wired as an AiiDA daemon (tests/integration/peers). Our
controllers in the plumpy-shaped mode, over kiwipy's communicator and over ours from ``connect(api="kiwipy")``,
must give the same nesting of futures per call, raise ``UnroutableError`` where plumpy's does, and add no deadline
unless one is asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kiwipy
import plumpy
import pytest

import process_comms
from tests.integration import test_plumpy_compat as compat
from tests.integration.peers import plumpy_procs
from tests.integration.test_plumpy_compat import Peer, T, aiida_names, plumpy_checkpoint

# the peers and communicators of test_plumpy_compat.py, as fixtures here too (and its clean-up after each test)
plumpy_worker = compat.plumpy_worker
kiwi_comm = compat.kiwi_comm
our_comm = compat.our_comm
delete_declared = compat._delete_declared

pytestmark = pytest.mark.broker

#: The controllers compared: plumpy's own (the reference) and ours in the plumpy-shaped mode.
FLAVOURS = ["plumpy", "ours-over-kiwipy", "ours-over-process_comms"]


def depth(fut: Any, timeout: float = T) -> tuple[int, Any]:
    """How many future levels wrap a value, and the value (each level waited for at most ``timeout``)."""
    levels = 0
    while isinstance(fut, concurrent.futures.Future):
        fut = fut.result(timeout)
        levels += 1
    return levels, fut


@pytest.fixture
def controller_for(kiwi_comm: Any, our_comm: Any) -> Iterator[Callable[[str, Peer], Any]]:
    """``controller_for(flavour, worker)``: a thread controller of that flavour on the worker's names."""
    made: list[process_comms.RemoteProcessThreadController] = []

    def make(flavour: str, worker: Peer, **kwargs: Any) -> Any:
        if flavour == "plumpy":
            return plumpy.RemoteProcessThreadController(kiwi_comm(worker.names))
        comm = kiwi_comm(worker.names) if flavour == "ours-over-kiwipy" else our_comm(worker.names, api="kiwipy")
        controller = process_comms.RemoteProcessThreadController(comm, api="plumpy", **kwargs)
        made.append(controller)
        return controller

    yield make


def shapes(controller: Any, worker: Peer) -> dict[str, Any]:
    """What each of plumpy's calls gives on a plumpy worker: (levels of futures, value or its type)."""
    seen: dict[str, Any] = {}
    levels, pid = depth(controller.launch_process(plumpy_procs.WaitProc, nowait=True))
    seen["launch nowait"] = (levels, type(pid))
    levels, status = depth(controller.get_status(pid))
    seen["status"] = (levels, sorted(status))
    seen["pause"] = depth(controller.pause_process(pid, "held"))
    seen["paused"] = depth(controller.get_status(pid))[1]["paused"]
    seen["play"] = depth(controller.play_process(pid))
    seen["kill"] = depth(controller.kill_process(pid, "killed"))
    seen["launch"] = depth(controller.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 2}}))
    seen["launch no_reply"] = depth(controller.launch_process(plumpy_procs.AddProc, no_reply=True))
    # AiiDA's revive_processes: ``continue_process(pk, nowait=..., no_reply=False).result()`` then ``.done()``
    checkpoint = plumpy_checkpoint(worker.config["persister_dir"], plumpy_procs.AddProc, {"a": 20, "b": 22})
    first = controller.continue_process(checkpoint, nowait=False, no_reply=False).result(T)
    seen["continue first level"] = type(first).__name__
    seen["continue"] = depth(first)
    seen["pause_all"] = controller.pause_all("held")
    seen["play_all"] = controller.play_all()
    seen["kill_all"] = controller.kill_all(None)
    return seen


def test_the_thread_controller_gives_plumpys_shapes(plumpy_worker: Peer, controller_for: Any) -> None:
    reference = shapes(controller_for("plumpy", plumpy_worker), plumpy_worker)
    # plumpy's worker (a LoopCommunicator over kiwipy) answers a kill with pending, pending, then the result
    assert reference["kill"] == (3, True), reference
    assert reference["continue first level"] == "Future"
    for flavour in FLAVOURS[1:]:
        controller = controller_for(flavour, plumpy_worker)
        assert shapes(controller, plumpy_worker) == reference, flavour
        # plumpy's execute_process deadlocks on kiwipy's loop thread (its continue is sent from there): ours
        # answers as its continue_process does, a future of the continue's first level
        executed = controller.execute_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 2, "b": 2}})
        assert depth(executed) == (2, {"sum": 4}), flavour


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_unroutable_kill_raises_from_the_call(plumpy_worker: Peer, controller_for: Any, flavour: str) -> None:
    """AiiDA's ``Process.kill`` catches ``UnroutableError`` around ``kill_process(child)``, not on its future."""
    controller = controller_for(flavour, plumpy_worker)
    with pytest.raises(kiwipy.UnroutableError):
        controller.kill_process(uuid.uuid4(), "no such process")


class Silent:
    """An RPC subscriber that answers ``pending`` and then never: a process that never finishes the action."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.never: list[kiwipy.Future] = []

    def __call__(self, _comm: Any, _msg: Any) -> kiwipy.Future:
        self.called.set()
        fut = kiwipy.Future()
        self.never.append(fut)
        return fut


def test_no_deadline_unless_asked(broker_url: str, kiwi_comm: Any) -> None:
    names = aiida_names()
    server = kiwi_comm(names)
    silent = Silent()
    pid = str(uuid.uuid4())
    server.add_rpc_subscriber(silent, pid)
    client = kiwi_comm(names)

    flat = process_comms.RemoteProcessThreadController(client, rpc_timeout=1.0)  # ours: always a deadline
    plain = process_comms.RemoteProcessThreadController(client, api="plumpy")
    asked = process_comms.RemoteProcessThreadController(client, api="plumpy", rpc_timeout=1.0)

    start = time.monotonic()
    with pytest.raises(process_comms.TimeoutError):
        flat.kill_process(pid).result(T)
    assert time.monotonic() - start < T

    unbounded = plain.kill_process(pid).result(T)  # the pending level
    bounded = asked.kill_process(pid).result(T)
    with pytest.raises(process_comms.TimeoutError):
        bounded.result(T)  # the level still pending fails at the deadline asked for
    assert not unbounded.done(), "the plumpy-shaped mode added a deadline nobody asked for"
    with pytest.raises(process_comms.TimeoutError):
        plain.kill_process(pid, timeout=0.5).result(T).result(T)  # a call's own timeout is asked too
    assert silent.called.is_set()
    for fut in silent.never:
        fut.set_result(True)


def shown(value: Any) -> Any:
    """A value, or "Future" for a level left unawaited (a future of another loop or thread)."""
    return "Future" if isinstance(value, (concurrent.futures.Future, asyncio.Future)) else value


def test_the_async_controller_awaits_plumpys_levels(plumpy_worker: Peer, kiwi_comm: Any, our_comm: Any) -> None:
    async def scenario(controller: Any) -> list[Any]:
        pid = await controller.launch_process(plumpy_procs.WaitProc, nowait=True)
        answers = [type(pid), shown(await controller.get_status(pid))]
        answers += [shown(await controller.pause_process(pid)), shown(await controller.play_process(pid))]
        answers.append(shown(await controller.kill_process(pid)))
        answers.append(await controller.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 1}}))
        answers.append(await controller.execute_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 3, "b": 1}}))
        return answers

    def run(controller: Any) -> list[Any]:
        return asyncio.run(asyncio.wait_for(scenario(controller), 6 * T))

    reference = run(plumpy.RemoteProcessController(kiwi_comm(plumpy_worker.names)))
    # plumpy awaits a fixed number of levels: from its worker, status and pause/play/kill are one level short
    assert reference[1:] == ["Future", "Future", "Future", "Future", {"sum": 2}, {"sum": 4}], reference
    ours = process_comms.RemoteProcessController(our_comm(plumpy_worker.names, api="kiwipy"), api="plumpy")
    assert run(ours) == reference
    over_kiwipy = process_comms.RemoteProcessController(kiwi_comm(plumpy_worker.names), api="plumpy")
    assert run(over_kiwipy) == reference


def test_the_plumpy_shape_needs_a_kiwipy_shaped_communicator(our_comm: Any) -> None:
    comm = our_comm(aiida_names())
    with pytest.raises(TypeError, match="api='kiwipy'"):
        process_comms.RemoteProcessThreadController(comm, api="plumpy")
    with pytest.raises(ValueError, match="api must be"):
        process_comms.RemoteProcessThreadController(comm, api="kiwipy")  # type: ignore[arg-type]


def test_a_dropped_controller_over_kiwipy_leaves_no_thread(kiwi_comm: Any) -> None:
    """aiida-core makes a controller per ``Manager`` and per ``Runner`` and drops them unclosed; plumpy's starts
    no thread, so ours must not leave one per controller either (it did: a loop thread each, never stopped)."""
    names = aiida_names()
    server, client = kiwi_comm(names), kiwi_comm(names)
    pid = str(uuid.uuid4())
    server.add_rpc_subscriber(lambda _comm, _msg: {"state": "running"}, pid)
    # The threads alive now, not their count: a thread an earlier test left to wind down may end during the
    # loop (CI once read 6 == 7), which a count would take for one of ours gone and a new one of ours hidden.
    before = set(threading.enumerate())
    for _ in range(10):
        controller = process_comms.RemoteProcessThreadController(client, api="plumpy")
        assert controller.get_status(pid).result(T) == {"state": "running"}  # plumpy's call, straight through
        del controller
    assert set(threading.enumerate()) - before == set()
    flat = process_comms.RemoteProcessThreadController(client, api="plumpy")
    assert isinstance(flat.list_workers(within=0.2).result(T), list)  # our extra starts its threads on first use
    assert set(threading.enumerate()) - before
    flat.close()
