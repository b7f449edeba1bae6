"""A launch with our options (a label, a time limit) on a plumpy 0.26 worker (process_comms/wire/launch_options.py):
it launches there as any launch does (the options are simply not kept), because they travel in a key of the task
body that plumpy's ``ProcessLauncher`` never reads; the same options inside ``args`` would break it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import process_comms
from process_comms.wire.messages import create_launch_body
from tests.integration.peers import plumpy_procs

from .test_plumpy_compat import Peer, T, _delete_declared, our_comm, plumpy_worker

__all__ = ["_delete_declared", "our_comm", "plumpy_worker"]  # fixtures

pytestmark = pytest.mark.broker


def test_a_launch_with_a_label_and_a_time_limit_runs_on_a_plumpy_worker(plumpy_worker: Peer, our_comm: Any) -> None:
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    outputs = controller.launch_process(
        plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 2, "b": 3}}, label="nightly", time_limit=60
    ).result(T)
    assert outputs == {"sum": 5}
    pid = controller.launch_process(plumpy_procs.WaitProc, nowait=True, label="nightly", time_limit=60).result(T)
    assert isinstance(pid, uuid.UUID)
    assert controller.kill_process(pid).result(T) is True
    executed = controller.execute_process(  # a create task with the options, then a continue
        plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 1, "b": 1}}, label="nightly", time_limit=60
    )
    assert executed.result(T) == {"sum": 2}


def test_the_same_options_inside_args_would_break_a_plumpy_worker(plumpy_worker: Peer, our_comm: Any) -> None:
    """Why they travel beside ``args``: plumpy passes ``args`` as keyword arguments to ``_launch``."""
    controller = process_comms.RemoteProcessThreadController(our_comm(plumpy_worker.names))
    body = create_launch_body(plumpy_procs.AddProc, init_kwargs={"inputs": {"a": 2, "b": 3}})
    body["args"]["label"] = "nightly"
    with pytest.raises(process_comms.RemoteError, match="label"):
        controller.task_send(body).result(T)
