"""A worker can tell at once that another worker's connection is gone (issue 15, "Takeover in seconds").

The token is an exclusive queue: RabbitMQ deletes it when its connection closes or its process dies,
so a passive declare answers 405 (alive) or 404 (gone) without waiting for any claim to lapse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import process_comms
from tests.conftest import BROKER_URL
from tests.waiting import wait_until

T = 20.0


def test_a_closed_communicator_is_seen_gone_by_another(comm_factory: Any, backend: str) -> None:
    watcher = comm_factory()
    other = process_comms.connect(None) if backend == "embedded" else comm_factory()
    token = other.loop_thread.run_sync(lambda: other.core.liveness_token(), timeout=T)
    assert watcher.loop_thread.run_sync(lambda: watcher.core.is_alive(token), timeout=T) is True
    other.close()
    assert watcher.loop_thread.run_sync(lambda: watcher.core.is_alive(token), timeout=T) is False
    own = watcher.loop_thread.run_sync(lambda: watcher.core.liveness_token(), timeout=T)
    assert watcher.loop_thread.run_sync(lambda: watcher.core.is_alive(own), timeout=T) is True


@pytest.mark.parametrize("backend", ["rmq"], indirect=True)
def test_a_sigkilled_process_is_seen_gone_within_a_second_or_two(comm_factory: Any, names: dict[str, str]) -> None:
    script = textwrap.dedent(
        f"""
        import sys, threading, process_comms
        comm = process_comms.connect({BROKER_URL!r}, testing_mode=True, **{names!r})
        print(comm.loop_thread.run_sync(lambda: comm.core.liveness_token(), timeout=20), flush=True)
        threading.Event().wait(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        token = child.stdout.readline().strip()
        watcher = comm_factory()
        assert watcher.loop_thread.run_sync(lambda: watcher.core.is_alive(token), timeout=T) is True
        os.kill(child.pid, signal.SIGKILL)
        child.wait(T)
        wait_until(
            lambda: watcher.loop_thread.run_sync(lambda: watcher.core.is_alive(token), timeout=T) is False,
            5,
            "the killed process's token gone",
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(T)
        if child.stdout is not None:
            child.stdout.close()
