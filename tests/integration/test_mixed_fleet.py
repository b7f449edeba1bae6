"""A mixed fleet: one plumpy worker and one of ours on one task queue, driven by our controller and plumpy's.

Issue 26's "compatibility proven, not assumed": our wire extensions (wire/messages.py: no ``pending`` reply
for our controllers, broadcast headers, route binds without ``bind-ok``) are negotiated per message, so each
task, reply and broadcast must work whichever kind of worker takes it and whichever kind of client sent it.
The same class name runs on both workers (tests/integration/peers/mixed_procs.py) and says which engine ran it.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plumpy
import pytest

import process_comms
from tests.integration.peers import mixed_procs
from tests.integration.test_plumpy_compat import (  # noqa: F401 - fixtures (the first one autouse)
    Peer,
    T,
    _delete_declared,
    aiida_names,
    kiwi_comm,
    our_comm,
    unwrap,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.broker

#: Launches from each client: enough that both workers take some (RabbitMQ deals a queue's messages round-robin
#: among its consumers), few enough for a loaded CI machine.
LAUNCHES = 12


@pytest.fixture
def fleet(broker_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A plumpy worker (AiiDA-style, plumpy's launcher on kiwipy) and ours, on the same exchanges and queue."""
    names = aiida_names()
    base = {**names, "url": broker_url, "testing_mode": False}
    plumpy_worker = Peer(
        "tests.integration.peers.plumpy_worker",
        {**base, "persister_dir": str(tmp_path / "pickles")},
        tmp_path / "plumpy_worker.log",
    )
    try:
        pc_worker = Peer(
            "tests.integration.peers.pc_worker", {**base, "sqlite": str(tmp_path / "db.sqlite")}, tmp_path / "pc.log"
        )
    except BaseException:
        plumpy_worker.stop()
        raise
    yield names
    pc_worker.stop()
    plumpy_worker.stop()


def test_both_clients_launch_on_both_workers_of_one_queue(
    fleet: dict[str, str],
    our_comm: Any,  # noqa: F811 - the fixture imported above
    kiwi_comm: Any,  # noqa: F811
) -> None:
    ours = process_comms.RemoteProcessThreadController(our_comm(fleet))
    theirs = plumpy.RemoteProcessThreadController(kiwi_comm(fleet))
    inputs = [{"a": i, "b": 100} for i in range(LAUNCHES)]
    from_ours = [ours.launch_process(mixed_procs.Add, init_kwargs={"inputs": i}) for i in inputs]
    from_theirs = [theirs.launch_process(mixed_procs.Add, init_kwargs={"inputs": i}) for i in inputs]

    ours_results = [fut.result(T) for fut in from_ours]  # flat: one level, whatever worker answered
    theirs_results = [unwrap(fut) for fut in from_theirs]  # plumpy's nesting, whatever worker answered
    assert [r["sum"] for r in ours_results] == [i["a"] + 100 for i in inputs]
    assert [r["sum"] for r in theirs_results] == [i["a"] + 100 for i in inputs]
    engines = {r["engine"] for r in ours_results + theirs_results}
    assert engines == {"plumpy", "process_comms"}, f"one worker took every task: {engines}"


def test_status_pause_play_kill_across_the_fleet(
    fleet: dict[str, str],
    our_comm: Any,  # noqa: F811 - the fixture imported above
    kiwi_comm: Any,  # noqa: F811
) -> None:
    ours = process_comms.RemoteProcessThreadController(our_comm(fleet))
    theirs = plumpy.RemoteProcessThreadController(kiwi_comm(fleet))
    pids = [ours.launch_process(mixed_procs.Idle, nowait=True).result(T) for _ in range(4)]
    pids += [unwrap(theirs.launch_process(mixed_procs.Idle, nowait=True)) for _ in range(4)]

    def states() -> list[Any]:
        return [ours.get_status(pid).result(T)["state"] for pid in pids]

    wait_until(lambda: set(states()) == {"ProcessState.WAITING"}, T, "every process waiting", interval=0.05)
    # plumpy's controller asks the same processes: the same answers, in plumpy's nesting
    assert [unwrap(theirs.get_status(pid))["state"] for pid in pids] == ["ProcessState.WAITING"] * len(pids)

    def paused() -> list[bool]:
        futures = ours.get_status_many(pids, timeout=T)
        return [bool(fut.result(T)["paused"]) for fut in futures.values()]

    ours.pause_all("paused by a test")  # a broadcast of ours reaches plumpy's processes and ours
    wait_until(lambda: all(paused()), T, "every process of both workers paused", interval=0.05)
    theirs.play_all()  # and plumpy's broadcast reaches ours
    wait_until(lambda: not any(paused()), T, "every process of both workers played", interval=0.05)

    # each client kills half, across the kinds of worker
    kills: list[concurrent.futures.Future[Any]] = [ours.kill_process(pid) for pid in pids[::2]]
    assert [f.result(T) for f in kills] == [True] * len(kills)
    assert [unwrap(theirs.kill_process(pid)) for pid in pids[1::2]] == [True] * len(pids[1::2])
