"""The thread boundary on its own (no broker): LoopThread, ControllerFuture, wait_all, with_deadline."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import process_comms
from process_comms.client.futures import as_asyncio
from process_comms.transports.loop import LoopThread, post, run_on, spawn_on, with_deadline

T = 10.0


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    """A loop thread, stopped at teardown."""
    lt = LoopThread("test-loop")
    try:
        yield lt
    finally:
        lt.stop()


async def value(x: Any) -> Any:
    return x


async def forever(started: threading.Event | None = None, finished: threading.Event | None = None) -> None:
    """Wait until cancelled; signal when it starts and when it is torn down."""
    if started is not None:
        started.set()
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        if finished is not None:
            finished.set()


def test_submit_returns_a_controller_future_with_the_result(loop_thread: LoopThread) -> None:
    fut = loop_thread.start_task_soon(value, 42)
    assert isinstance(fut, process_comms.ControllerFuture)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(T) == 42


def test_controller_future_is_awaitable_from_another_loop(loop_thread: LoopThread) -> None:
    async def main() -> tuple[Any, Any, Any]:
        direct = await asyncio.wait_for(_await(loop_thread.start_task_soon(value, "a")), T)
        wrapped = await asyncio.wait_for(asyncio.wrap_future(loop_thread.start_task_soon(value, "b")), T)
        adapted = await asyncio.wait_for(as_asyncio(loop_thread.start_task_soon(value, "c")), T)
        return direct, wrapped, adapted

    async def _await(fut: process_comms.ControllerFuture[Any]) -> Any:
        return await fut

    assert asyncio.run(main()) == ("a", "b", "c")


def test_blocking_on_the_loop_thread_is_a_deadlock_error(loop_thread: LoopThread) -> None:
    async def block_here() -> list[BaseException]:
        errors: list[BaseException] = []
        pending = loop_thread.start_task_soon(value, 1)
        for attempt in (lambda: pending.result(1), lambda: pending.exception(1)):
            try:
                attempt()
            except process_comms.DeadlockError as exc:
                errors.append(exc)
        try:
            loop_thread.run_sync(value, 2, timeout=1)
        except process_comms.DeadlockError as exc:
            errors.append(exc)
        return errors

    errors = loop_thread.start_task_soon(block_here).result(T)
    assert len(errors) == 3
    assert all(isinstance(e, process_comms.ProcessCommsError) for e in errors)


def test_a_done_future_can_be_read_on_the_loop_thread(loop_thread: LoopThread) -> None:
    done = loop_thread.start_task_soon(value, 7)
    assert done.result(T) == 7

    async def read() -> Any:
        return done.result(0)

    assert loop_thread.start_task_soon(read).result(T) == 7


def test_cancelling_the_future_cancels_the_task(loop_thread: LoopThread) -> None:
    started, finished = threading.Event(), threading.Event()
    fut = loop_thread.start_task_soon(forever, started, finished)
    assert started.wait(T)
    assert fut.cancel()
    assert finished.wait(T)  # the coroutine was cancelled, its finally ran
    assert fut.cancelled()
    assert loop_thread.start_task_soon(value, "still working").result(T) == "still working"


def test_calls_from_many_threads_each_run_once_in_their_thread_order(loop_thread: LoopThread) -> None:
    """Bursts share loop wake-ups: every call still runs, exactly once, in the order its thread issued it."""
    seen: list[tuple[int, int]] = []

    async def record(thread: int, i: int) -> int:
        seen.append((thread, i))
        return i

    def issue(thread: int) -> list[concurrent.futures.Future[int]]:
        return [loop_thread.start_task_soon(record, thread, i) for i in range(500)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(issue, range(4)))
    for batch in batches:
        assert [f.result(T) for f in batch] == list(range(500))
    assert len(seen) == 2000
    for thread in range(4):
        assert [i for t, i in seen if t == thread] == list(range(500))


def test_a_call_cancelled_before_it_starts_never_runs(loop_thread: LoopThread) -> None:
    gate, holding, ran = threading.Event(), threading.Event(), threading.Event()

    async def hold_the_loop() -> None:
        holding.set()
        gate.wait(T)  # blocks the loop thread on purpose (bounded), so the next call cannot start yet

    async def must_not_run() -> None:
        ran.set()

    first = loop_thread.start_task_soon(hold_the_loop)
    assert holding.wait(T)
    fut = loop_thread.start_task_soon(must_not_run)
    fut.cancel()
    gate.set()
    first.result(T)
    assert loop_thread.start_task_soon(value, 1).result(T) == 1  # the loop has drained everything posted before
    assert fut.cancelled()
    assert not ran.is_set()


def test_ctrl_c_while_posting_does_not_leave_the_loop_deaf(loop_thread: LoopThread) -> None:
    """A KeyboardInterrupt in the posting thread, at the wake-up, must not stop later calls from starting."""
    real = loop_thread.loop.call_soon_threadsafe
    interrupted: list[bool] = []

    def interrupt_once(*args: Any, **kwargs: Any) -> Any:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # where a signal handler would raise it
        return real(*args, **kwargs)

    ran = threading.Event()

    async def first() -> None:
        ran.set()

    loop_thread.loop.call_soon_threadsafe = interrupt_once  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            loop_thread.start_task_soon(first)
        assert loop_thread.start_task_soon(value, "next").result(T) == "next"
    finally:
        loop_thread.loop.call_soon_threadsafe = real  # type: ignore[method-assign]
    assert ran.wait(T)  # the interrupted call was queued: it ran with the next wake-up


def test_run_times_out_with_a_typed_error_and_cancels(loop_thread: LoopThread) -> None:
    finished = threading.Event()
    with pytest.raises(process_comms.TimeoutError):
        loop_thread.run_sync(lambda: forever(finished=finished), timeout=0.2)
    assert finished.wait(T)


def test_stop_fails_calls_in_flight_and_is_idempotent() -> None:
    lt = LoopThread("stopping")
    started = threading.Event()
    fut = lt.start_task_soon(forever, started)
    assert started.wait(T)
    lt.stop()
    with pytest.raises(process_comms.CommunicatorClosed):
        fut.result(T)
    assert not lt.thread.is_alive()
    assert not lt.running
    lt.stop()
    late = lt.start_task_soon(value, 1)
    with pytest.raises(process_comms.CommunicatorClosed):
        late.result(T)


def test_a_call_posted_after_stop_never_calls_its_function() -> None:
    """What crosses the boundary is a callable: a stopped loop never makes the coroutine (nothing to leak)."""
    lt = LoopThread("stopped")
    lt.stop()
    called: list[int] = []

    async def record() -> None:
        called.append(1)

    with pytest.raises(process_comms.CommunicatorClosed):
        lt.start_task_soon(record).result(T)
    with pytest.raises(process_comms.CommunicatorClosed):
        run_on(lt.loop, record).result(T)
    assert called == []


def test_a_coroutine_object_is_refused_with_a_clear_error(loop_thread: LoopThread) -> None:
    coro = value(1)
    with pytest.raises(TypeError, match="coroutine function and its arguments"):
        loop_thread.start_task_soon(coro)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine function and its arguments"):
        run_on(loop_thread.loop, value(2))  # type: ignore[arg-type]
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


def test_run_on_cancels_the_task_when_its_future_is_cancelled(loop_thread: LoopThread) -> None:
    started, finished = threading.Event(), threading.Event()
    fut = run_on(loop_thread.loop, forever, started, finished)
    assert started.wait(T)
    assert fut.cancel()
    assert finished.wait(T)


def test_run_on_post_and_spawn_on_share_one_wake_up_per_burst_and_keep_their_order(loop_thread: LoopThread) -> None:
    """A worker's process loop posts thousands of calls a second to its communicator's loop (issue 16): a
    burst of them, whichever function posted them, is one self-pipe write, and they run in posting order."""
    real = loop_thread.loop.call_soon_threadsafe
    wakes: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        wakes.append(1)
        return real(*args, **kwargs)

    gate, holding = threading.Event(), threading.Event()

    async def hold_the_loop() -> None:
        holding.set()
        gate.wait(T)  # blocks the loop thread on purpose (bounded): the burst below queues up behind it

    seen: list[int] = []

    async def note(i: int) -> int:
        seen.append(i)
        return i

    first = loop_thread.start_task_soon(hold_the_loop)
    assert holding.wait(T)
    loop_thread.loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        futures = []
        for i in range(0, 300, 3):
            futures.append(run_on(loop_thread.loop, note, i))
            assert post(loop_thread.loop, seen.append, i + 1)
            spawn_on(loop_thread.loop, note, i + 2)
        gate.set()
        first.result(T)
        assert [f.result(T) for f in futures] == list(range(0, 300, 3))
        assert loop_thread.start_task_soon(value, "after").result(T) == "after"
    finally:
        loop_thread.loop.call_soon_threadsafe = real  # type: ignore[method-assign]
    # run_on and spawn_on start tasks (each runs a loop turn later than its start): within each kind, in order
    assert [i for i in seen if i % 3 == 1] == list(range(1, 300, 3))
    assert [i for i in seen if i % 3 != 1] == sorted(i for i in seen if i % 3 != 1)
    assert len(seen) == 300
    assert len(wakes) <= 2, f"{len(wakes)} wake-ups for a burst of 300 posts"


def test_a_posted_call_that_raises_does_not_strand_the_calls_after_it(loop_thread: LoopThread) -> None:
    """Calls posted in one burst share a wake-up: one that raises is reported, and the rest still run."""
    reported: list[dict[str, Any]] = []
    loop_thread.loop.set_exception_handler(lambda _loop, context: reported.append(context))
    gate, holding = threading.Event(), threading.Event()

    async def hold_the_loop() -> None:
        holding.set()
        gate.wait(T)  # blocks the loop thread on purpose (bounded): the burst below queues up behind it

    def fails() -> None:
        raise ValueError("a posted call failed")

    ran = threading.Event()
    first = loop_thread.start_task_soon(hold_the_loop)
    assert holding.wait(T)
    assert post(loop_thread.loop, fails)
    assert post(loop_thread.loop, ran.set)
    gate.set()
    first.result(T)
    assert ran.wait(T)
    assert [type(c.get("exception")) for c in reported] == [ValueError]


def test_posting_to_a_closed_loop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    assert post(loop, print) is False
    with pytest.raises(process_comms.CommunicatorClosed):
        run_on(loop, value, 1).result(T)
    spawn_on(loop, value, 1)  # logged, not raised: no one awaits it


def test_a_failure_of_spawned_work_is_logged(loop_thread: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("spawned and failed")

    spawn_on(loop_thread.loop, fails)
    assert loop_thread.start_task_soon(value, 1).result(T) == 1
    assert loop_thread.start_task_soon(asyncio.sleep, 0).result(T) is None  # the task's done callback ran
    assert "spawned and failed" in caplog.text


def test_with_deadline_raises_the_typed_timeout() -> None:
    with pytest.raises(process_comms.TimeoutError, match="slow thing") as info:
        asyncio.run(with_deadline(asyncio.sleep(5), 0.05, "slow thing"))
    assert isinstance(info.value, builtins.TimeoutError)
    assert asyncio.run(with_deadline(value(3), 1, "quick")) == 3


def test_wait_all_maps_keys_to_results_and_errors() -> None:
    ok: concurrent.futures.Future[Any] = concurrent.futures.Future()
    ok.set_result({"state": "running"})
    failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
    failed.set_exception(process_comms.ProcessUnreachable("gone"))
    cancelled: concurrent.futures.Future[Any] = concurrent.futures.Future()
    cancelled.cancel()
    pending: concurrent.futures.Future[Any] = concurrent.futures.Future()

    got = process_comms.wait_all({"ok": ok, "failed": failed, "cancelled": cancelled, "pending": pending}, 0.1)
    assert got["ok"] == {"state": "running"}
    assert isinstance(got["failed"], process_comms.ProcessUnreachable)
    assert isinstance(got["cancelled"], concurrent.futures.CancelledError)
    assert isinstance(got["pending"], process_comms.TimeoutError)
    assert not pending.done()  # not cancelled: the caller decides


def test_wait_all_of_an_iterable_is_keyed_by_the_futures() -> None:
    futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(3)]
    for i, fut in enumerate(futures):
        fut.set_result(i)
    assert process_comms.wait_all(futures, T) == {fut: i for i, fut in enumerate(futures)}


def test_wait_all_returns_as_soon_as_everything_is_done(loop_thread: LoopThread) -> None:
    futures = {i: loop_thread.start_task_soon(value, i) for i in range(100)}
    assert process_comms.wait_all(futures, T) == {i: i for i in range(100)}
