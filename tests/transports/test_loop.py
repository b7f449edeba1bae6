"""The loop thread (process_comms/transports/loop.py): context-manager lifecycle and its timeout message."""

from __future__ import annotations

import asyncio
import threading

import pytest

from process_comms import defaults
from process_comms.errors import TimeoutError as PCTimeoutError
from process_comms.transports.loop import LoopThread


def test_a_with_block_runs_the_loop_and_stops_it_at_its_end() -> None:
    with LoopThread("test-with") as lt:
        assert lt.running
        assert lt.run_sync(asyncio.sleep, 0, "done") == "done"
    assert not lt.thread.is_alive()
    assert lt.loop.is_closed()


def test_a_deferred_loop_thread_starts_on_entering_the_block() -> None:
    lt = LoopThread("test-deferred", start=False)
    assert not lt.thread.is_alive()
    with lt:
        assert lt.running
    assert not lt.running


def test_run_sync_without_a_timeout_names_the_default_it_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    async def blocked() -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)

    with LoopThread("test-timeout") as lt:
        monkeypatch.setattr(defaults, "CLOSE_TIMEOUT", 0.2)
        try:
            with pytest.raises(PCTimeoutError, match=r"within 0\.2 s"):
                lt.run_sync(blocked)
        finally:
            release.set()
