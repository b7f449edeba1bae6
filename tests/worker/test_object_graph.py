"""The worker as one object graph (issue 26): no import cycle inside ``process_comms/worker`` (not even under
``TYPE_CHECKING``), and one object, the launcher's ``CommLink``, that crosses to the communicator's loop, a
launch's state broadcasts crossing together (CONTRIBUTING.md, "The worker: threads, loops and one launch")."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any, cast

import pytest

import process_comms
from process_comms import ProcessLauncher, RemoteProcessController
from process_comms.transports.base import AsyncCommunicator
from process_comms.transports.loop import LoopThread, run_on
from process_comms.worker._link import CommLink
from process_comms.worker.persistence import InMemoryPersister
from tests.procs import Add, Waiter
from tests.waiting import wait_until

T = 30.0
WORKER = Path(process_comms.__file__).parent / "worker"


def _module(path: Path) -> str:
    parts = path.relative_to(WORKER.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _worker_imports() -> dict[str, set[str]]:
    """``module -> worker modules it imports`` at module level (``if TYPE_CHECKING:`` blocks included)."""
    modules = {_module(path): path for path in WORKER.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        body = list(ast.parse(path.read_text()).body)
        body += [node for block in body if isinstance(block, ast.If) for node in block.body]
        for node in body:
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found = f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                if found in modules and found != name:
                    edges[name].add(found)
    return edges


def test_the_worker_modules_import_each_other_without_a_cycle() -> None:
    edges = _worker_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_a_launch_crosses_to_the_communicators_loop_through_one_link_a_few_times() -> None:
    with process_comms.connect() as comm, ProcessLauncher(persister=InMemoryPersister()) as launcher:  # embedded
        comm.add_task_subscriber(launcher)
        controller = process_comms.RemoteProcessThreadController(comm)
        inputs = {"inputs": {"a": 1, "b": 2}}
        assert controller.launch_process("tests.procs:Add", init_kwargs=inputs).result(T) == {"sum": 3}  # warm
        link = launcher.link(comm.core, comm.loop)  # the one link of this communicator, made by the first task
        before, launches = link.crossings, 20
        for _ in range(launches):
            assert controller.launch_process("tests.procs:Add", init_kwargs=inputs, persist=True).result(T) == {
                "sum": 3
            }
        wait_until(lambda: not launcher.processes and not launcher.ending, T, "every route to be removed")
        per_launch = (link.crossings - before) / launches
        # the route's bind (there and back), the state broadcasts (together), the route's removal; was 6 one-way
        # hand-overs and a round trip before the link gathered the broadcasts
        print(f"{per_launch:.2f} crossings to the communicator's loop per launch")
        assert per_launch <= 5.0, per_launch


def test_what_a_link_sent_starts_on_the_communicators_loop_before_a_later_call() -> None:
    """``CommLink.call`` flushes the sends of the turn before it, so they reach the communicator first (a route's
    bind sent, then a request that needs it); before, the gathered sends started two loop turns after the call."""
    started: list[str] = []

    async def note(what: str) -> str:
        started.append(what)
        return what

    with LoopThread(name="test-comm") as comm, LoopThread(name="test-home") as home:
        link = CommLink(cast(AsyncCommunicator, object()), comm.loop, home.loop)

        async def on_home() -> str:
            link.send(functools.partial(note, "sent 1"))
            link.send(functools.partial(note, "sent 2"))
            return await link.call(note, "called")

        assert run_on(home.loop, on_home).result(T) == "called"
        wait_until(lambda: len(started) == 3, T, "the two sends to start")
    assert started == ["sent 1", "sent 2", "called"]


def test_a_new_pids_route_is_bound_before_its_launch_answers(comm_factory: Any) -> None:
    """A new pid's route is bound without a round trip between the loops (``Routes.bind``), yet before the launch
    answers: a caller whose turn the answer starts asks the process at once and reaches it, every time (on the
    embedded bus the answer and the ask share the communicator's loop, so a bind started after the answer
    would not be there yet)."""
    worker_comm, client_comm = comm_factory(), comm_factory()
    with ProcessLauncher(persister=InMemoryPersister()) as launcher:
        worker_comm.add_task_subscriber(launcher)

        async def launch_then_ask() -> list[str]:
            ctl = RemoteProcessController(client_comm.core)
            states = []
            for _ in range(30):
                pid = await ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True)
                states.append((await ctl.get_status(pid, timeout=T))["state_name"])
                assert await ctl.kill_process(pid, timeout=T)
            return states

        states = run_on(client_comm.loop, launch_then_ask).result(T)
        link = launcher.link(worker_comm.core, worker_comm.loop)
        assert link.bound  # the first route's bind was awaited, the others were not
    assert set(states) <= {"created", "running", "waiting"}, states


def test_a_process_whose_route_cannot_be_bound_is_killed_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bind sent without waiting that fails all the same (here the communicator refuses it) leaves no process
    running that nobody can reach: it is killed, and its record says why."""
    store = InMemoryPersister()
    with process_comms.connect() as comm, ProcessLauncher(persister=store) as launcher:  # embedded
        comm.add_task_subscriber(launcher)
        controller = process_comms.RemoteProcessThreadController(comm)
        assert controller.launch_process(Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}

        async def refuse(*_args: object) -> None:
            raise process_comms.CommunicatorClosed("refused by the test")

        monkeypatch.setattr(comm.core, "add_rpc_subscriber", refuse)
        pid = controller.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
        record = wait_until(lambda: (r := store.load_record(pid)) and r.get("state_name") == "killed" and r, T, "kill")
        assert "its route could not be bound: refused by the test" in str(record.get("status")), record
