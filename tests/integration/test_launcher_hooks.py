"""The launcher's hooks have plumpy's signatures (issue 17): a subclass overriding ``_launch``, ``_create`` and
``_continue`` the way AiiDA's ``ProcessLauncher`` does (``aiida/manage/external/rmq/launcher.py``: load from
its own store, handle a missing checkpoint) is called with plumpy's arguments, and its result is what the
caller gets. On the embedded back end (no broker): the hooks are the same on every back end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from process_comms.wire.messages import create_create_body

T = 10.0
ADD = "tests.procs:Add"


class AiidaStyleLauncher(process_comms.ProcessLauncher):
    """Records every hook call; ``_continue`` serves ended processes from its own store (AiiDA reads the
    node) and answers a missing checkpoint itself instead of failing the task."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[Any, ...]] = []
        #: pid -> outputs of processes that ended (AiiDA: a terminated node's outputs)
        self.ended: dict[str, dict[str, Any]] = {}

    async def _launch(
        self,
        _communicator: Any,
        process_class: Any,
        persist: bool,
        nowait: bool,
        init_args: Any = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.calls.append(("launch", _communicator, process_class, persist, nowait, init_args, init_kwargs))
        result = await super()._launch(_communicator, process_class, persist, nowait, init_args, init_kwargs)
        return result if nowait else {"launched": result}

    async def _create(
        self,
        _communicator: Any,
        process_class: Any,
        persist: bool,
        init_args: Any = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.calls.append(("create", _communicator, process_class, persist, init_args, init_kwargs))
        return await super()._create(_communicator, process_class, persist, init_args, init_kwargs)

    async def _continue(self, _communicator: Any, pid: Any, nowait: bool, tag: str | None = None) -> Any:
        self.calls.append(("continue", _communicator, pid, nowait, tag))
        if str(pid) in self.ended:  # already terminated: the outputs from our own store, nothing is run
            return self.ended[str(pid)]
        try:
            result = await super()._continue(_communicator, pid, nowait, tag)
        except process_comms.PersistenceError as exc:  # no checkpoint: say so in the result, as a node would
            return {"missing_checkpoint": str(pid), "why": str(exc)}
        if not nowait:
            self.ended[str(pid)] = result
        return result


@pytest.fixture
def wired() -> Iterator[tuple[process_comms.ThreadCommunicator, AiidaStyleLauncher]]:
    comm = process_comms.connect()  # embedded
    launcher = AiidaStyleLauncher(persister=process_comms.InMemoryPersister())
    comm.add_task_subscriber(launcher)
    try:
        yield comm, launcher
    finally:
        comm.close()
        launcher.close()


def test_launch_hook_gets_plumpy_arguments_and_its_result_is_the_answer(wired: Any) -> None:
    comm, launcher = wired
    controller = process_comms.RemoteProcessThreadController(comm)

    outputs = controller.launch_process(ADD, init_kwargs={"inputs": {"a": 1, "b": 2}})
    assert outputs.result(T) == {"launched": {"sum": 3}}
    assert launcher.calls == [("launch", comm, ADD, False, False, None, {"inputs": {"a": 1, "b": 2}})]

    pid = controller.launch_process(ADD, init_kwargs={"inputs": {"a": 0, "b": 0}}, nowait=True).result(T)
    assert isinstance(pid, uuid.UUID)
    assert launcher.calls[-1][2:5] == (ADD, False, True)


def test_create_and_continue_hooks_with_plumpy_arguments(wired: Any) -> None:
    comm, launcher = wired
    controller = process_comms.RemoteProcessThreadController(comm)

    body = create_create_body(ADD, init_args=None, init_kwargs={"inputs": {"a": 20, "b": 22}}, persist=True)
    pid = controller.task_send(body).result(T)
    assert isinstance(pid, uuid.UUID)
    assert launcher.calls == [("create", comm, ADD, True, None, {"inputs": {"a": 20, "b": 22}})]

    assert controller.continue_process(pid, tag=None).result(T) == {"sum": 42}
    assert launcher.calls[-1] == ("continue", comm, pid, False, None)

    # a second continue: served from the subclass's own store, the checkpoint is not run again
    assert controller.continue_process(pid).result(T) == {"sum": 42}
    assert launcher.calls[-1] == ("continue", comm, pid, False, None)

    # execute_process = create + continue, both through the hooks
    assert controller.execute_process(ADD, init_kwargs={"inputs": {"a": 1, "b": 1}}).result(T) == {"sum": 2}
    assert [call[0] for call in launcher.calls[-2:]] == ["create", "continue"]


def test_continue_hook_handles_a_missing_checkpoint(wired: Any) -> None:
    comm, launcher = wired
    controller = process_comms.RemoteProcessThreadController(comm)
    unknown = uuid.uuid4()
    answer = controller.continue_process(unknown, nowait=True).result(T)
    assert answer["missing_checkpoint"] == str(unknown)
    assert launcher.calls == [("continue", comm, unknown, True, None)]
