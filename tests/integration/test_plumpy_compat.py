"""Wire compatibility with plumpy 0.26 + kiwipy 0.9 on a real RabbitMQ (kiwipy: https://github.com/aiidateam/kiwipy/blob/main/src/kiwipy/rmq/communicator.py).

Peers run in separate OS processes (``tests/integration/peers``): a plumpy worker wired like an AiiDA
daemon, and a process_comms worker. Clients run in this process: ours (thread and asyncio controllers)
and plumpy's (on kiwipy's ``RmqThreadCommunicator``). Every test uses its own AiiDA-style names
(``aiida-<uuid>.messages`` / ``.tasks`` / ``.process.queue``) and the production declarations on both
sides (no testing mode: a durable task queue, as an AiiDA daemon declares it), deleted after each test.
kiwipy's testing mode declares a transient shared task queue, which RabbitMQ 4.3 refuses and ours
never declares (aiida-core #7375; ``process_comms/transports/rmq/_topology.py``), so the two testing
modes do not share a task queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kiwipy
import kiwipy.rmq
import pika
import plumpy  # registers !uuid on PyYAML's loaders, as every plumpy peer has it
import pytest
import yaml

import process_comms
from process_comms.wire.messages import create_create_body
from tests import procs
from tests.conftest import BROKER_URL, rabbitmqctl
from tests.integration.peers import pc_procs, plumpy_procs
from tests.waiting import wait_until

pytestmark = pytest.mark.broker  # every test talks to RabbitMQ, some through module-level helpers

#: Deadline for one call (seconds); every wait in this file is bounded by it.
T = 10.0
WORKDIR = Path(__file__).resolve().parents[2]
PLUMPY_STATUS_KEYS = {"ctime", "paused", "process_string", "state"}
#: Our processes leave ``waiting`` when a kill cancels their sleep, so the kill lands in either state.
KILLED_SUBJECTS = ("state_changed.running.killed", "state_changed.waiting.killed")


# -- helpers -----------------------------------------------------------------------------------------


#: Every name set a test made, deleted after the test (see :func:`_delete_declared`).
_DECLARED: list[dict[str, str]] = []


def aiida_names() -> dict[str, str]:
    """Names as an AiiDA profile makes them (``aiida-<profile uuid>`` prefix), unique per call."""
    prefix = f"aiida-{uuid.uuid4()}"
    names = {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }
    _DECLARED.append(names)
    return names


@pytest.fixture(autouse=True)
def _delete_declared() -> Iterator[None]:
    """After each test (peers and communicators closed), delete its exchanges and task queue.

    The peers declare them durable (production declarations), so nothing else removes them.
    """
    yield
    while _DECLARED:
        _delete(_DECLARED.pop())


def unwrap(fut: Any, timeout: float = T) -> Any:
    """Resolve a (possibly nested) kiwipy future the way AiiDA does, with a deadline."""
    return plumpy.futures.unwrap_kiwi_future(fut).result(timeout)


class Peer:
    """A worker in another OS process; it exits when its stdin closes, and is killed if it does not."""

    def __init__(self, module: str, config: dict[str, Any], log: Path) -> None:
        self.config = config
        self.log = log
        self._log_fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, json.dumps(config)],
            cwd=WORKDIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_fh,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            line = ""
        if line.strip() != "READY":
            self.stop()
            pytest.fail(f"{module} did not start (got {line!r}); its log:\n{log.read_text()}")

    @property
    def names(self) -> dict[str, str]:
        return {k: self.config[k] for k in ("message_exchange", "task_exchange", "task_queue")}

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(5)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self._log_fh.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def plumpy_worker(broker_url: str, tmp_path: Path) -> Iterator[Peer]:
    """plumpy.ProcessLauncher on a kiwipy RmqThreadCommunicator wrapped in a LoopCommunicator (AiiDA-style)."""
    config = {**aiida_names(), "url": broker_url, "testing_mode": False, "persister_dir": str(tmp_path / "pickles")}
    peer = Peer("tests.integration.peers.plumpy_worker", config, tmp_path / "plumpy_worker.log")
    yield peer
    peer.stop()


@pytest.fixture
def pc_worker(broker_url: str, tmp_path: Path) -> Iterator[Peer]:
    """process_comms.ProcessLauncher with a SQLite SqlPersister, subscribed with process_comms.connect."""
    config = {**aiida_names(), "url": broker_url, "testing_mode": False, "sqlite": str(tmp_path / "checkpoints.db")}
    peer = Peer("tests.integration.peers.pc_worker", config, tmp_path / "pc_worker.log")
    yield peer
    peer.stop()


@pytest.fixture
def our_comm() -> Iterator[Callable[..., process_comms.ThreadCommunicator]]:
    """Our communicators (production declarations unless told otherwise), closed at the end of the test."""
    made: list[process_comms.ThreadCommunicator] = []

    def make(names: dict[str, str], testing_mode: bool = False, **options: Any) -> process_comms.ThreadCommunicator:
        comm = process_comms.connect(BROKER_URL, testing_mode=testing_mode, **names, **options)
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.close()


@pytest.fixture
def kiwi_comm() -> Iterator[Callable[..., kiwipy.rmq.RmqThreadCommunicator]]:
    """kiwipy 0.9 thread communicators (production declarations unless told otherwise), closed at the end."""
    made: list[kiwipy.rmq.RmqThreadCommunicator] = []

    def make(names: dict[str, str], testing_mode: bool = False) -> kiwipy.rmq.RmqThreadCommunicator:
        comm = kiwipy.rmq.RmqThreadCommunicator.connect(
            connection_params={"url": BROKER_URL}, testing_mode=testing_mode, **names
        )
        made.append(comm)
        return comm

    yield make
    for comm in made:
        comm.close()


def plumpy_checkpoint(directory: str, cls: type[plumpy.Process], inputs: dict[str, Any] | None = None) -> uuid.UUID:
    """Create a plumpy process here and checkpoint it into the worker's PicklePersister (as AiiDA's submit does)."""
    loop = asyncio.new_event_loop()
    try:
        proc = cls(inputs=inputs, loop=loop)
        plumpy.PicklePersister(directory).save_checkpoint(proc)
        return proc.pid  # type: ignore[no-any-return]
    finally:
        loop.close()


def is_flat(value: Any) -> bool:
    return not isinstance(value, (concurrent.futures.Future, asyncio.Future))


class Collector:
    """A broadcast subscriber that records (sender, subject) and signals when ``until`` matches."""

    def __init__(self, until: Callable[[Any, Any], bool]) -> None:
        self.seen: list[tuple[Any, Any]] = []
        self.done = threading.Event()
        self._until = until
        self._lock = threading.Lock()

    def __call__(self, _comm: Any, _body: Any, sender: Any, subject: Any, _cid: Any) -> None:
        with self._lock:
            self.seen.append((sender, subject))
        if self._until(sender, subject):
            self.done.set()

    def wait(self) -> list[tuple[Any, Any]]:
        assert self.done.wait(T), f"the expected broadcast never came; seen {self.seen}"
        with self._lock:
            return list(self.seen)


# -- 1. our controllers drive a plumpy worker --------------------------------------------------------


def test_our_thread_controller_launches_on_plumpy_worker(plumpy_worker: Peer, our_comm: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))

    outputs = controller.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 2, "b": 3}}).result(T)
    assert outputs == {"sum": 5}

    pid = controller.launch_process("tests.integration.peers.plumpy_procs:WaitProc", nowait=True).result(T)
    assert isinstance(pid, uuid.UUID)
    assert controller.kill_process(pid).result(T) is True


def test_our_thread_controller_controls_plumpy_process(plumpy_worker: Peer, our_comm: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    pid = controller.launch_process(plumpy_procs.WaitProc, nowait=True).result(T)
    ended = controller.wait_for_process(pid, timeout=T, poll_interval=0.5)

    status = controller.get_status(pid).result(T)
    assert set(status) == PLUMPY_STATUS_KEYS
    assert isinstance(status["ctime"], float)
    assert status["paused"] is False
    assert status["state"] == "ProcessState.WAITING"
    assert status["process_string"].startswith("<WaitProc> (ProcessState.WAITING")

    # plumpy answers pause/kill with pending, pending, result (LoopCommunicator): we give one flat value
    paused = controller.pause_process(pid, "held by a test").result(T)
    assert paused is True
    assert controller.get_status(pid).result(T)["paused"] is True
    assert controller.play_process(pid).result(T) is True
    assert controller.get_status(pid).result(T)["paused"] is False
    assert controller.kill_process(pid, "killed by a test").result(T) is True

    assert ended.result(T) == "killed"  # seen through plumpy's state_changed broadcast
    with pytest.raises(process_comms.ProcessUnreachable):
        controller.get_status(pid).result(T)  # the process closed: mandatory publish is returned


def test_our_async_controller_drives_plumpy_worker(plumpy_worker: Peer, our_comm: Any) -> None:
    comm = our_comm(plumpy_worker.names)

    async def scenario() -> None:
        controller = process_comms.RemoteProcessController(comm)
        assert await controller.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 4, "b": 4}}) == {
            "sum": 8
        }
        pid = await controller.launch_process(plumpy_procs.WaitProc, nowait=True)
        assert isinstance(pid, uuid.UUID)
        status = await controller.get_status(pid)
        assert set(status) == PLUMPY_STATUS_KEYS and status["state"] == "ProcessState.WAITING"
        assert await controller.pause_process(pid) is True
        assert (await controller.get_status(pid))["paused"] is True
        assert await controller.play_process(pid) is True
        assert await controller.kill_process(pid) is True
        with pytest.raises(process_comms.ProcessUnreachable):
            await controller.get_status(pid)
        # create (persisted, in the worker's PicklePersister) then continue
        assert await controller.execute_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 2}}) == {
            "sum": 3
        }

    asyncio.run(asyncio.wait_for(scenario(), 6 * T))


def test_our_broadcasts_pause_play_kill_all_plumpy_processes(plumpy_worker: Peer, our_comm: Any) -> None:
    comm = our_comm(plumpy_worker.names)
    controller = process_comms.RemoteProcessThreadController(comm)
    launched = [controller.launch_process(plumpy_procs.WaitProc, nowait=True) for _ in range(2)]
    pids = [fut.result(T) for fut in launched]
    continued = plumpy_checkpoint(plumpy_worker.config["persister_dir"], plumpy_procs.WaitProc)
    assert controller.continue_process(continued, nowait=True).result(T) == continued
    pids.append(continued)
    killed = Collector(lambda _sender, _subject: len(killed.seen) >= len(pids))
    comm.add_broadcast_subscriber(process_comms.BroadcastFilter(killed, subject="state_changed.*.killed"))

    def paused() -> list[bool]:
        futures = controller.get_status_many(pids, timeout=T)
        return [fut.result(T)["paused"] for fut in futures.values()]

    controller.pause_all("paused by a test")
    wait_until(lambda: all(paused()), T, "every plumpy process to be paused", interval=0.02)
    controller.play_all()
    wait_until(lambda: not any(paused()), T, "every plumpy process to be played", interval=0.02)

    controller.kill_all("killed by a test")
    assert sorted(killed.wait(), key=str) == sorted(((pid, "state_changed.waiting.killed") for pid in pids), key=str)


def test_our_continue_from_plumpy_pickle_persister(plumpy_worker: Peer, our_comm: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    directory = plumpy_worker.config["persister_dir"]

    finished = plumpy_checkpoint(directory, plumpy_procs.AddProc, {"a": 20, "b": 22})
    assert controller.continue_process(finished).result(T) == {"sum": 42}

    # a continued process gets the worker's communicator from the launcher's load context: reachable
    waiting = plumpy_checkpoint(directory, plumpy_procs.WaitProc)
    pid = controller.continue_process(waiting, nowait=True).result(T)
    assert pid == waiting and isinstance(pid, uuid.UUID)
    assert controller.get_status(pid).result(T)["state"] == "ProcessState.WAITING"
    assert controller.kill_process(pid).result(T) is True

    # a checkpoint made by the worker itself (create task), then continued
    created = controller.task_send(
        create_create_body(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 1}}, persist=True)
    ).result(T)
    assert isinstance(created, uuid.UUID)
    assert (Path(directory) / f"{created}.pickle").exists()
    assert controller.continue_process(created).result(T) == {"sum": 2}


def test_wait_for_process_outlives_an_unanswered_status_poll(broker_url: str, kiwi_comm: Any, our_comm: Any) -> None:
    names = aiida_names()
    server = kiwi_comm(names)
    pid = uuid.uuid4()
    polls: list[Any] = []

    def end() -> None:  # as a plumpy process ends: its final broadcast, then its route goes
        server.broadcast_send(None, pid, "state_changed.waiting.finished")
        server.remove_rpc_subscriber(str(pid))

    def stalled(_comm: Any, msg: Any) -> kiwipy.Future:
        polls.append(msg)
        if len(polls) == 2:  # the waiter kept polling after the first poll went unanswered: now end it
            threading.Thread(target=end, daemon=True).start()
        return kiwipy.Future()  # 'pending' and then nothing, as from a plumpy process whose reply stalls

    server.add_rpc_subscriber(stalled, str(pid))
    controller = process_comms.RemoteProcessThreadController(our_comm(names))
    assert controller.wait_for_process(pid, timeout=T, poll_interval=0.2).result(T + 1) == "finished"


# -- 2. plumpy's controllers drive our worker --------------------------------------------------------


def test_plumpy_thread_controller_drives_our_worker(pc_worker: Peer, kiwi_comm: Any) -> None:
    controller = plumpy.RemoteProcessThreadController(kiwi_comm(pc_worker.names))

    assert unwrap(controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}})) == {"sum": 3}
    pid = unwrap(controller.launch_process(pc_procs.Idle, nowait=True))
    assert isinstance(pid, uuid.UUID)

    status = controller.get_status(pid).result(T)  # one level, as from a directly subscribed plumpy process
    assert PLUMPY_STATUS_KEYS <= set(status)
    assert status["state"] == "ProcessState.WAITING" and status["paused"] is False
    assert status["process_string"] == "<Idle> (ProcessState.WAITING)"
    assert isinstance(status["ctime"], float)

    assert unwrap(controller.pause_process(pid, "held")) is True
    assert controller.get_status(pid).result(T)["paused"] is True
    assert unwrap(controller.play_process(pid)) is True
    assert controller.get_status(pid).result(T)["paused"] is False
    assert unwrap(controller.kill_process(pid, "bye")) is True
    # (that the ended process is then unroutable is test_rpc_to_a_process_that_just_ended_is_unroutable)

    # create (checkpoint in our worker's SQLite persister), then continue
    created = unwrap(
        controller.task_send(create_create_body(procs.Steps, init_kwargs={"inputs": {"n": 3}}, persist=True))
    )
    assert isinstance(created, uuid.UUID)
    assert unwrap(controller.continue_process(created)) == {"steps": 3, "resumed_from": 0}
    # a failing process: kiwipy's RemoteException carrying the message
    with pytest.raises(kiwipy.RemoteException, match="always fails"):
        unwrap(controller.launch_process(procs.Fails))


def test_plumpy_thread_controller_broadcasts_reach_our_processes(pc_worker: Peer, kiwi_comm: Any) -> None:
    comm = kiwi_comm(pc_worker.names)
    controller = plumpy.RemoteProcessThreadController(comm)
    pids = [unwrap(controller.launch_process(pc_procs.Idle, nowait=True)) for _ in range(2)]
    killed = Collector(lambda _sender, _subject: len(killed.seen) >= len(pids))
    comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(killed, subject="state_changed.*.killed"))

    def paused() -> list[bool]:
        return [controller.get_status(pid).result(T)["paused"] for pid in pids]

    controller.pause_all("paused by plumpy")
    wait_until(lambda: all(paused()), T, "our processes to be paused by plumpy's pause_all", interval=0.02)
    assert {controller.get_status(pid).result(T)["status"] for pid in pids} == {"paused by plumpy"}
    controller.play_all()
    wait_until(lambda: not any(paused()), T, "our processes to be played by plumpy's pause_all", interval=0.02)

    controller.kill_all("killed by plumpy")
    seen = killed.wait()
    assert sorted(str(sender) for sender, _ in seen) == sorted(map(str, pids))
    assert all(subject in KILLED_SUBJECTS for _, subject in seen)


@pytest.mark.parametrize("client", ["kiwipy", "ours"])
def test_rpc_to_a_process_that_just_ended_is_unroutable(
    client: str, pc_worker: Peer, kiwi_comm: Any, our_comm: Any
) -> None:
    """Polling a process while it is killed gives status dicts, then 'unroutable' -- never a remote failure.

    AiiDA tells "unreachable" from "failed" by ``kiwipy.UnroutableError`` (``control.py``); we by
    ProcessUnreachable. A plumpy process answers until its binding is gone, then the publish is returned.
    """
    plumpy_controller = plumpy.RemoteProcessThreadController(kiwi_comm(pc_worker.names))
    ours = process_comms.RemoteProcessThreadController(our_comm(pc_worker.names))
    status = plumpy_controller.get_status if client == "kiwipy" else ours.get_status
    rounds, outcomes = 16, []
    for _ in range(rounds):
        pid = unwrap(plumpy_controller.launch_process(pc_procs.Idle, nowait=True))
        plumpy_controller.kill_all("ended under polling")
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            try:
                assert isinstance(status(pid).result(T), dict)
            except kiwipy.UnroutableError as exc:  # ProcessUnreachable is one too
                outcomes.append(type(exc).__name__)
                break
            except Exception as exc:  # noqa: BLE001 - record what the client saw instead
                outcomes.append(f"{type(exc).__name__}: {exc}")
                break
    expected = "UnroutableError" if client == "kiwipy" else "ProcessUnreachable"
    assert outcomes == [expected] * rounds


def test_plumpy_async_controller_gets_flat_values_from_our_worker(pc_worker: Peer, kiwi_comm: Any) -> None:
    """plumpy's RemoteProcessController awaits fixed levels: status 1, pause/play/kill 2, tasks 2."""
    comm = kiwi_comm(pc_worker.names)

    async def scenario() -> None:
        controller = plumpy.RemoteProcessController(comm)
        assert await controller.launch_process(procs.Add, init_kwargs={"inputs": {"a": 2, "b": 2}}) == {"sum": 4}
        pid = await controller.launch_process(pc_procs.Idle, nowait=True)
        assert isinstance(pid, uuid.UUID)
        status = await controller.get_status(pid)
        assert isinstance(status, dict) and status["state"] == "ProcessState.WAITING"
        for result in (
            await controller.pause_process(pid, "held"),
            await controller.play_process(pid),
            await controller.kill_process(pid, "bye"),
        ):
            assert is_flat(result) and result is True
        assert await controller.execute_process(procs.Add, init_kwargs={"inputs": {"a": 3, "b": 3}}) == {"sum": 6}
        # plumpy's controllers have no create_process: send the create task through the communicator
        created = comm.task_send(create_create_body(procs.Steps, init_kwargs={"inputs": {"n": 2}}, persist=True))
        pid2 = await asyncio.wrap_future(plumpy.futures.unwrap_kiwi_future(created))
        assert await controller.continue_process(pid2, nowait=True) == pid2

    asyncio.run(asyncio.wait_for(scenario(), 6 * T))


# -- 3. state-change broadcasts, both directions ------------------------------------------------------


def test_kiwipy_listener_sees_our_state_changes(pc_worker: Peer, kiwi_comm: Any, our_comm: Any) -> None:
    listener_comm = kiwi_comm(pc_worker.names)
    pids: list[Any] = []
    collector = Collector(lambda sender, subject: bool(pids) and sender == pids[0] and subject.endswith(".killed"))
    listener_comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(collector, subject="state_changed.*"))

    controller = process_comms.RemoteProcessThreadController(our_comm(pc_worker.names))
    pids.append(controller.launch_process(pc_procs.Idle, nowait=True).result(T))
    assert controller.kill_process(pids[0]).result(T) is True
    seen = [subject for sender, subject in collector.wait() if sender == pids[0]]

    assert all(isinstance(sender, uuid.UUID) for sender, _ in collector.seen)
    assert seen[0] == "state_changed.None.created"
    assert "state_changed.created.running" in seen
    assert "state_changed.running.waiting" in seen
    assert seen[-1] in KILLED_SUBJECTS


def test_a_kill_while_waiting_is_broadcast_as_waiting_killed(pc_worker: Peer, kiwi_comm: Any, our_comm: Any) -> None:
    listener_comm = kiwi_comm(pc_worker.names)
    pids: list[Any] = []
    collector = Collector(lambda sender, subject: bool(pids) and sender == pids[0] and subject.endswith(".killed"))
    listener_comm.add_broadcast_subscriber(kiwipy.BroadcastFilter(collector, subject="state_changed.*"))
    controller = process_comms.RemoteProcessThreadController(our_comm(pc_worker.names))
    pids.append(controller.launch_process(pc_procs.Idle, nowait=True).result(T))
    assert controller.get_status(pids[0]).result(T)["state"] == "ProcessState.WAITING"
    assert controller.kill_process(pids[0]).result(T) is True
    assert [subject for sender, subject in collector.wait() if sender == pids[0]] == [
        "state_changed.None.created",
        "state_changed.created.running",
        "state_changed.running.waiting",
        "state_changed.waiting.killed",
    ]


def test_our_listener_sees_plumpy_state_changes(plumpy_worker: Peer, our_comm: Any) -> None:
    comm = our_comm(plumpy_worker.names)
    pids: list[Any] = []
    collector = Collector(lambda sender, subject: bool(pids) and sender == pids[0] and subject.endswith(".killed"))
    comm.add_broadcast_subscriber(process_comms.BroadcastFilter(collector, subject="state_changed.*"))

    controller = process_comms.RemoteProcessThreadController(comm)
    pids.append(controller.launch_process(plumpy_procs.WaitProc, nowait=True).result(T))
    assert controller.kill_process(pids[0]).result(T) is True
    seen = [subject for sender, subject in collector.wait() if sender == pids[0]]

    assert all(isinstance(sender, uuid.UUID) for sender, _ in collector.seen)
    assert "state_changed.created.running" in seen
    assert "state_changed.running.waiting" in seen
    assert seen[-1] == "state_changed.waiting.killed"


# -- 4. AiiDA-style names end to end ------------------------------------------------------------------


def test_aiida_style_names_end_to_end(plumpy_worker: Peer, pc_worker: Peer, our_comm: Any, kiwi_comm: Any) -> None:
    ours = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    theirs = plumpy.RemoteProcessThreadController(kiwi_comm(pc_worker.names))
    assert ours.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 1}}).result(T) == {"sum": 2}
    assert unwrap(theirs.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 1}})) == {"sum": 2}

    ours_pid = ours.launch_process(plumpy_procs.WaitProc, nowait=True).result(T)
    theirs_pid = unwrap(theirs.launch_process(pc_procs.Idle, nowait=True))

    bindings = json.loads(
        rabbitmqctl("--formatter", "json", "list_bindings", "source_name", "destination_name", "routing_key")
    )
    keys = {(b["source_name"], b["destination_name"], b["routing_key"]) for b in bindings}
    for worker, pid in ((plumpy_worker, ours_pid), (pc_worker, theirs_pid)):
        n = worker.names
        assert n["message_exchange"].startswith("aiida-") and n["task_queue"].endswith(".process.queue")
        assert (n["task_exchange"], n["task_queue"], n["task_queue"]) in keys
        assert any(src == n["message_exchange"] and key == f"[rpc].{pid}" for src, _, key in keys)

    assert ours.get_status(ours_pid).result(T)["state"] == "ProcessState.WAITING"
    assert theirs.get_status(theirs_pid).result(T)["state"] == "ProcessState.WAITING"
    assert ours.kill_process(ours_pid).result(T) is True
    assert unwrap(theirs.kill_process(theirs_pid)) is True


# -- 5. conformance, observed from the broker ---------------------------------------------------------


def _pika() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(BROKER_URL))


def _delete(names: dict[str, str]) -> None:
    """Delete the task queue and both exchanges of ``names`` (deleting what is gone is not an error)."""
    with _pika() as connection:
        channel = connection.channel()
        channel.queue_delete(names["task_queue"])
        channel.exchange_delete(names["message_exchange"])
        channel.exchange_delete(names["task_exchange"])


def _args(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, _type, value in entry["arguments"]}


def _load(body: bytes) -> Any:
    """Decode as a kiwipy peer does (FullLoader, plumpy imported)."""
    return yaml.load(body, Loader=yaml.FullLoader)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@pytest.mark.slow  # rabbitmqctl on a busy broker: 4-12 s
def test_conformance_observed_by_the_broker(broker_url: str, our_comm: Any) -> None:
    """Non-testing mode, observed by a raw pika spy (bound with '#' to both exchanges) and rabbitmqctl."""
    names = aiida_names()
    msg_ex, task_ex, task_q = names["message_exchange"], names["task_exchange"], names["task_queue"]
    launcher = process_comms.ProcessLauncher(persister=process_comms.InMemoryPersister())
    try:
        server = our_comm(names, testing_mode=False)
        client_comm = our_comm(names, testing_mode=False)
        server.add_task_subscriber(launcher)
        with _pika() as spy_connection:
            spy = spy_connection.channel()
            spy_queue = spy.queue_declare("", exclusive=True).method.queue
            spy.queue_bind(spy_queue, msg_ex, "#")
            spy.queue_bind(spy_queue, task_ex, "#")

            controller = process_comms.RemoteProcessThreadController(client_comm)
            pid = controller.launch_process(pc_procs.Idle, nowait=True).result(T)
            assert controller.get_status(pid).result(T)["state"] == "ProcessState.WAITING"
            controller.pause_all("conformance")
            wait_until(
                lambda: controller.get_status(pid).result(T)["paused"], T, "the pause_all broadcast", interval=0.02
            )

            exchanges = json.loads(
                rabbitmqctl(
                    "--formatter",
                    "json",
                    "list_exchanges",
                    "name",
                    "type",
                    "durable",
                    "auto_delete",
                    "internal",
                    "arguments",
                )
            )
            queues = json.loads(
                rabbitmqctl(
                    "--formatter", "json", "list_queues", "name", "durable", "auto_delete", "exclusive", "arguments"
                )
            )
            bindings = json.loads(
                rabbitmqctl("--formatter", "json", "list_bindings", "source_name", "destination_name", "routing_key")
            )

            assert controller.play_process(pid).result(T) is True
            assert controller.kill_process(pid).result(T) is True
            captured = []
            while True:
                method, props, body = spy.basic_get(spy_queue, auto_ack=True)
                if method is None:
                    break
                captured.append((method.exchange, method.routing_key, props, body))
    finally:
        launcher.close()
        for comm in (locals().get("server"), locals().get("client_comm")):
            if comm is not None:
                comm.close()

    # exchanges: topic, non-durable, not auto-deleted, not internal, no arguments
    ours = {e["name"]: e for e in exchanges if e["name"] in (msg_ex, task_ex)}
    assert set(ours) == {msg_ex, task_ex}
    for exchange in ours.values():
        assert (exchange["type"], exchange["durable"], exchange["auto_delete"], exchange["internal"]) == (
            "topic",
            False,
            False,
            False,
        )
        assert exchange["arguments"] == []

    # the task queue: durable, shared, exactly kiwipy's x-message-ttl = 7 days, plus the queue type named
    # (issue 15: a vhost whose default type is quorum must not turn it into one); RabbitMQ treats
    # x-queue-type=classic as equivalent to kiwipy's declaration without it, both ways (the
    # declaration-order test below declares each first)
    (task_queue,) = [q for q in queues if q["name"] == task_q]
    assert (task_queue["durable"], task_queue["auto_delete"], task_queue["exclusive"]) == (True, False, False)
    assert _args(task_queue) == {"x-message-ttl": 604_800_000, "x-queue-type": "classic"}

    # reply queues: exclusive, x-expires 60 s, bound to their exchange with their own name
    keys = {(b["source_name"], b["destination_name"], b["routing_key"]) for b in bindings}
    reply_queues = {}
    for exchange in (msg_ex, task_ex):
        found = [q for q in queues if q["name"].startswith(f"{exchange}-reply-")]
        assert len(found) == 1, f"one reply queue (the client's) on {exchange}: {found}"
        for q in found:
            assert q["exclusive"] is True and q["durable"] is False
            assert _args(q) == {"x-expires": 60_000, "x-queue-type": "classic"}
            assert (exchange, q["name"], q["name"]) in keys
        reply_queues[exchange] = {q["name"] for q in found}
    assert (task_ex, task_q, task_q) in keys
    assert any(src == msg_ex and key == f"[rpc].{pid}" for src, _, key in keys)
    assert any(src == msg_ex and key == "[broadcast]" for src, _, key in keys)

    # what travelled
    tasks = [(p, b) for ex, key, p, b in captured if ex == task_ex and key == task_q]
    rpcs = [(key, p, b) for ex, key, p, b in captured if ex == msg_ex and key.startswith("[rpc].")]
    broadcasts = [(p, b) for ex, key, p, b in captured if ex == msg_ex and key == "[broadcast]"]
    replies = [(ex, key, p, b) for ex, key, p, b in captured if key in reply_queues.get(ex, ())]

    ((task_props, task_body),) = tasks
    assert task_props.delivery_mode == 2
    assert task_props.reply_to in reply_queues[task_ex] and _is_uuid(task_props.correlation_id)
    assert task_body.startswith(b"!!python/tuple")
    task, no_reply = _load(task_body)
    assert no_reply is False
    assert task == {
        "task": "launch",
        "args": {
            "process_class": "tests.integration.peers.pc_procs:Idle",
            "persist": False,
            "nowait": True,
            "init_args": None,
            "init_kwargs": None,
        },
    }

    intents = [_load(b)["intent"] for _, _, b in rpcs]
    assert intents[-2:] == ["play", "kill"] and set(intents[:-2]) == {"status"}  # status polled until paused
    for key, props, _body in rpcs:
        assert key == f"[rpc].{pid}"
        assert props.delivery_mode == 1
        assert props.reply_to in reply_queues[msg_ex] and _is_uuid(props.correlation_id)
    assert _load(rpcs[-1][2]) == {"intent": "kill", "message": None, "force_kill": False}

    decoded_broadcasts = [_load(b) for _, b in broadcasts]
    for (props, _), envelope in zip(broadcasts, decoded_broadcasts, strict=True):
        assert set(envelope) == {"body", "sender", "subject", "correlation_id"}
        assert props.delivery_mode == 1 and props.reply_to is None and props.correlation_id is None
    assert {
        "body": {"intent": "pause", "message": "conformance"},
        "sender": None,
        "subject": "pause",
        "correlation_id": None,
    } in decoded_broadcasts
    assert {"body": None, "sender": pid, "subject": "state_changed.running.waiting", "correlation_id": None} in (
        decoded_broadcasts
    )

    by_correlation: dict[str, list[Any]] = {}
    for _ex, key, props, body in replies:
        by_correlation.setdefault(props.correlation_id, []).append((key, _load(body)))
    task_replies = by_correlation[task_props.correlation_id]
    assert [key for key, _ in task_replies] == [task_props.reply_to] * len(task_replies)
    assert task_replies[-1][1]["result"] == pid
    for _, reply in task_replies:
        assert set(reply["host"]) == {"hostname", "pid"}
        assert set(reply) - {"host"} in ({"pending"}, {"result"})
    status_reply = by_correlation[rpcs[0][1].correlation_id][-1][1]
    assert set(status_reply) == {"result"} and PLUMPY_STATUS_KEYS <= set(status_reply["result"])
    kill_replies = [reply for _, reply in by_correlation[rpcs[-1][1].correlation_id]]
    assert kill_replies[-1] == {"result": True} and all(r == {"pending": None} for r in kill_replies[:-1])


def test_declarations_are_interchangeable_with_kiwipy(broker_url: str, our_comm: Any, kiwi_comm: Any) -> None:
    """Non-testing mode: whoever declares first, the other re-declares without PRECONDITION_FAILED."""
    first, second = aiida_names(), aiida_names()
    try:
        # kiwipy declares everything first, then ours joins and talks to it
        kiwi_first = kiwi_comm(first, testing_mode=False)
        kiwi_first.add_task_subscriber(lambda _comm, task: {"echo": task})
        kiwi_first.add_rpc_subscriber(lambda _comm, msg: {"pong": msg}, "probe")
        ours_second = our_comm(first, testing_mode=False)
        assert ours_second.task_send({"task": "ping"}).result(T) == {"echo": {"task": "ping"}}
        assert ours_second.rpc_send("probe", 1).result(T) == {"pong": 1}
        kiwi_first.task_send({"task": "self"})  # kiwipy still fine on the same queue

        # ours declares everything first, then kiwipy joins and talks to it
        ours_first = our_comm(second, testing_mode=False)
        ours_first.add_task_subscriber(lambda _comm, task: {"echo": task})
        ours_first.add_rpc_subscriber(lambda _comm, msg: {"pong": msg}, "probe")
        kiwi_second = kiwi_comm(second, testing_mode=False)
        assert unwrap(kiwi_second.task_send({"task": "ping"})) == {"echo": {"task": "ping"}}
        assert unwrap(kiwi_second.rpc_send("probe", 2)) == {"pong": 2}
    finally:  # close before the autouse fixture deletes the durable queues and exchanges
        for comm in (locals().get(n) for n in ("kiwi_first", "ours_second", "ours_first", "kiwi_second")):
            if comm is not None:
                comm.close()


# -- 6. the safe decoder refuses what it must not run ------------------------------------------------


class Strange:
    """PyYAML's default dumper writes this as ``!!python/object:...Strange``."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


class MakeDir:
    """PyYAML's default dumper writes this as ``!!python/object/apply:posix.mkdir [path]``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("kind", ["object", "apply"])
def test_python_tags_in_a_kiwipy_rpc_reply_fail_fast(
    kind: str, broker_url: str, kiwi_comm: Any, our_comm: Any, tmp_path: Path
) -> None:
    names = aiida_names()
    marker = tmp_path / "must-not-exist"
    value = Strange() if kind == "object" else MakeDir(str(marker))
    assert yaml.dump(value).startswith(f"!!python/{kind}" if kind == "object" else "!!python/object/apply:")
    server = kiwi_comm(names)
    server.add_rpc_subscriber(lambda _comm, _msg: {"value": value}, "weird")
    client = our_comm(names)

    started = time.monotonic()
    with pytest.raises(process_comms.DecodeError, match="refused to decode"):
        client.rpc_send("weird", {"intent": "status", "message": None}, timeout=3 * T).result(3 * T)
    assert time.monotonic() - started < T, "a refused reply must fail the call at once, not at its deadline"
    assert not marker.exists()


def test_python_object_in_a_plumpy_task_reply_fails_fast(plumpy_worker: Peer, our_comm: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    started = time.monotonic()
    with pytest.raises(process_comms.DecodeError, match="python/object"):
        controller.launch_process(plumpy_procs.StrangeOutputProc, timeout=3 * T).result(3 * T)
    assert time.monotonic() - started < T
    # the communicator is still fine afterwards
    assert controller.launch_process(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 0}}).result(T) == {
        "sum": 1
    }


def test_python_tags_in_a_kiwipy_broadcast_are_dropped(
    broker_url: str, kiwi_comm: Any, our_comm: Any, tmp_path: Path
) -> None:
    names = aiida_names()
    marker = tmp_path / "must-not-exist"
    listener = our_comm(names)
    collector = Collector(lambda _sender, subject: subject == "fine")
    listener.add_broadcast_subscriber(collector)

    sender = kiwi_comm(names)
    assert sender.broadcast_send(Strange(), subject="strange")
    assert sender.broadcast_send(MakeDir(str(marker)), subject="apply")
    assert sender.broadcast_send({"ok": True}, sender=uuid.UUID(int=7), subject="fine")
    assert collector.wait() == [(uuid.UUID(int=7), "fine")]  # the queue is FIFO: the others came first
    assert not marker.exists()


def test_our_worker_refuses_a_task_with_python_tags(pc_worker: Peer, kiwi_comm: Any, tmp_path: Path) -> None:
    marker = tmp_path / "must-not-exist"
    comm = kiwi_comm(pc_worker.names)
    evil = plumpy.process_comms.create_launch_body(procs.Add, init_kwargs={"inputs": MakeDir(str(marker))})
    started = time.monotonic()
    with pytest.raises(kiwipy.RemoteException, match="refused to decode"):
        unwrap(comm.task_send(evil))
    assert time.monotonic() - started < T
    assert not marker.exists()
    # settled, not requeued: the worker takes the next task at once
    good = plumpy.process_comms.create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 5, "b": 5}}, nowait=False)
    assert unwrap(comm.task_send(good)) == {"sum": 10}
