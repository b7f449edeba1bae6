"""What breaks loop-on-a-thread designs, on every supported Python (issue 17, "Python versions").

The thread facade runs its event loop on a thread of its own. Three things an interpreter does to such a
thread are tested here: ``os.fork()`` after ``connect()`` (the child has no loop thread: its calls must fail
at once with a typed error, not wait for ever on a loop that is gone), interpreter exit with calls in flight
(it must come promptly, not after their deadlines), and blocking calls made from inside a running event
loop (``asyncio.run``, a notebook cell: they work, or fail with a typed error, and never hang). Last, the
shims that give Python 3.10 what the library uses of 3.11's asyncio behave as 3.11's asyncio does.
The fork and exit cases run in a subprocess, each bounded, its process group killed if it overruns.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

import process_comms
from process_comms import InMemoryPersister, ProcessLauncher, RemoteProcessThreadController, ThreadCommunicator, _compat
from tests import procs
from tests.conftest import BROKER_URL, rmq_options

R = TypeVar("R")

#: Bound of every single wait in this module (seconds).
T = 10.0
#: Bound of one subprocess of this module: start, connect, the checks, exit (seconds).
SCRIPT_TIMEOUT = 50.0
#: How long after its last line a script with calls in flight may take to exit (seconds): a close with
#: nothing to flush takes well under one; the calls' own deadlines (120 s in the script) must not count.
EXIT_BOUND = 5.0
ROOT = Path(__file__).resolve().parents[2]


def target(backend: str, names: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """The ``connect()`` arguments of a test's back end."""
    if backend == "embedded":
        return None, {}
    return BROKER_URL, rmq_options(names)


def run_script(source: str, timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a fresh interpreter (its own process group: a forked child is killed with it)."""
    with subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=T)
            pytest.fail(f"the script did not end within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def reported(out: str, who: str) -> dict[str, Any]:
    """The JSON report a script printed on its line starting with ``who``."""
    for line in out.splitlines():
        if line.startswith(who + " "):
            report: dict[str, Any] = json.loads(line[len(who) + 1 :])
            return report
    raise AssertionError(f"no {who!r} line in the script's output:\n{out}")


async def bounded(aw: Awaitable[R], timeout: float = T) -> R:
    """Await ``aw`` for at most ``timeout`` seconds."""
    return await asyncio.wait_for(aw, timeout)


# == os.fork() after connect() ================================================================================

FORK_SCRIPT = """
import json, os, sys, threading, time, warnings
import process_comms

T = 5.0
url, options = {url!r}, {options!r}
comm = process_comms.connect(url, **options)
release = threading.Event()

def slow(_comm, msg):  # answers once the parent has forked
    release.wait(T)
    return msg

comm.add_rpc_subscriber(slow, "slow")
comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
assert comm.rpc_send("echo", 1).result(T) == 1
in_flight = comm.rpc_send("slow", 2)
sys.stdout.flush()
with warnings.catch_warnings():
    # Python 3.12+ warns that forking a process with threads may deadlock the child
    # (https://docs.python.org/3/library/os.html#os.fork): what the child must not do is what is tested
    warnings.simplefilter("ignore", DeprecationWarning)
    child = os.fork()

if child == 0:
    def outcome(call):
        start = time.monotonic()
        try:
            got = {{"result": repr(call())}}
        except BaseException as exc:
            typed = isinstance(exc, process_comms.ProcessCommsError)
            got = {{"error": type(exc).__name__, "message": str(exc), "typed": typed}}
        got["seconds"] = round(time.monotonic() - start, 3)
        return got

    report = {{
        "in_flight": outcome(lambda: in_flight.result(T)),
        "rpc_send": outcome(lambda: comm.rpc_send("echo", 3).result(T)),
        "task_send": outcome(lambda: comm.task_send({{"n": 3}}).result(T)),
        "broadcast_send": outcome(lambda: comm.broadcast_send("hello").result(T)),
        "add_rpc_subscriber": outcome(lambda: comm.add_rpc_subscriber(lambda _c, m: m, "child")),
        "remove_rpc_subscriber": outcome(lambda: comm.remove_rpc_subscriber("echo")),
        "controller": outcome(
            lambda: process_comms.RemoteProcessThreadController(comm).get_status("slow").result(T)
        ),
        "close": outcome(comm.close),
    }}
    fresh = process_comms.connect(url, **options)  # a connection of the child's own works
    fresh.add_rpc_subscriber(lambda _comm, msg: msg, "child-echo")
    report["fresh"] = outcome(lambda: fresh.rpc_send("child-echo", 4).result(T))
    print("child " + json.dumps(report), flush=True)
    sys.exit(0)  # a normal exit: atexit runs in the child too, and must leave the parent's connection alone

release.set()
_, status = os.waitpid(child, 0)
parent = {{
    "in_flight": in_flight.result(T),
    "after": comm.rpc_send("echo", 5).result(T),
    "child_exit": os.waitstatus_to_exitcode(status),
}}
print("parent " + json.dumps(parent), flush=True)
comm.close()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_forked_child_fails_fast_on_the_parents_communicator(backend: str, names: dict[str, str]) -> None:
    url, options = target(backend, names)
    done = run_script(textwrap.dedent(FORK_SCRIPT).format(url=url, options=options))
    assert done.returncode == 0, done.stderr
    child = reported(done.stdout, "child")
    for call in ("in_flight", "rpc_send", "task_send", "broadcast_send", "add_rpc_subscriber", "controller"):
        got = child[call]
        assert got.get("error") == "CommunicatorClosed" and got["typed"], f"{call} in the child: {got}"
        assert got["seconds"] < 1, f"{call} in the child took {got['seconds']} s to fail"
    assert "parent process" in child["in_flight"]["message"]
    assert child["remove_rpc_subscriber"].get("error") == "CommunicatorClosed", child["remove_rpc_subscriber"]
    assert child["close"] == {"result": "None", "seconds": child["close"]["seconds"]}
    assert child["fresh"].get("result") == "4", child["fresh"]
    # the parent's communicator is untouched by the child's calls and by its exit
    assert reported(done.stdout, "parent") == {"in_flight": 2, "after": 5, "child_exit": 0}
    assert "Traceback" not in done.stderr, done.stderr


# == interpreter exit with calls in flight =====================================================================

EXIT_SCRIPT = """
import concurrent.futures, threading
import process_comms

url, options = {url!r}, {options!r}
comm = process_comms.connect(url, rpc_timeout={deadline}, task_timeout={deadline}, **options)
arrived = threading.Condition()
received = []

def silent(_comm, msg):  # never answers
    with arrived:
        received.append(msg)
        arrived.notify_all()
    return concurrent.futures.Future()

comm.add_rpc_subscriber(silent, "silent")
controller = process_comms.RemoteProcessThreadController(comm)
in_flight = [comm.rpc_send("silent", i) for i in range(10)]
in_flight += [controller.get_status("silent") for _ in range(10)]
in_flight.append(comm.task_send({{"nobody": "takes this task"}}))  # no task subscriber: it waits in the queue
with arrived:  # every RPC is with its subscriber: each waits for a reply that will not come
    assert arrived.wait_for(lambda: len(received) == 20, 10), len(received)
{extra}
assert not any(fut.done() for fut in in_flight)
print("in-flight", len(in_flight), flush=True)
"""

#: A thread still blocked on ``.result()`` at exit: it is not a daemon thread, so Python joins it before
#: the atexit hooks run (https://docs.python.org/3/library/threading.html#thread-objects, daemon threads).
WAITING_THREAD = """
import threading
threading.Thread(target=in_flight[0].result, name="waits-for-a-reply").start()
"""


def exit_time(source: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a script that prints ``in-flight N`` last; return the seconds from that line to its exit."""
    with subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        got: dict[str, float] = {}

        def watch() -> None:  # the line's arrival time, read on a thread so the wait stays bounded
            for line in proc.stdout:  # type: ignore[union-attr]
                if line.startswith("in-flight"):
                    got["at"] = time.monotonic()
                    break

        reader = threading.Thread(target=watch, daemon=True)
        reader.start()
        try:
            proc.wait(SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(T)
            pytest.fail(f"the script did not exit within {SCRIPT_TIMEOUT} s of its start")
        ended = time.monotonic()
        reader.join(T)
        out, err = proc.communicate(timeout=T)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert "at" in got, f"the script never reached its last line: {err}"
        return ended - got["at"], done


def test_exit_with_calls_in_flight_is_prompt(backend: str, names: dict[str, str]) -> None:
    url, options = target(backend, names)
    seconds, done = exit_time(textwrap.dedent(EXIT_SCRIPT).format(url=url, options=options, deadline=120, extra=""))
    print(f"\nexit with 21 calls in flight ({backend}): {seconds:.2f} s")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert seconds < EXIT_BOUND, f"exit took {seconds:.1f} s with calls in flight"


@pytest.mark.xfail(
    strict=True,
    reason="Python joins non-daemon threads before atexit hooks run, so the close that would fail the call "
    "comes only after its deadline (issue 17); closing from threading's own exit hook would fix it",
)
def test_exit_with_a_thread_blocked_on_a_call_is_prompt(backend: str, names: dict[str, str]) -> None:
    url, options = target(backend, names)
    deadline = 2 * EXIT_BOUND  # the call's own deadline: short, so the failing case stays bounded
    source = textwrap.dedent(EXIT_SCRIPT).format(url=url, options=options, deadline=deadline, extra=WAITING_THREAD)
    seconds, done = exit_time(source)
    print(f"\nexit with a thread blocked on a call ({backend}): {seconds:.2f} s")
    assert done.returncode == 0, done.stderr
    assert seconds < EXIT_BOUND, f"exit took {seconds:.1f} s: the blocked thread waited for its call's deadline"


# == blocking calls inside a running event loop ================================================================


def test_blocking_calls_inside_a_running_event_loop(backend: str, names: dict[str, str]) -> None:
    """``connect()``, the blocking subscribe methods, ``.result()`` and ``close()`` from ``asyncio.run``."""
    url, options = target(backend, names)
    worker = process_comms.connect(url, **options) if url is not None else None

    async def main() -> None:
        comm = process_comms.connect(url, **options)
        launcher = ProcessLauncher(persister=InMemoryPersister())
        try:
            (worker or comm).add_task_subscriber(launcher)
            heard = threading.Event()
            comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
            comm.add_broadcast_subscriber(lambda *_args: heard.set(), "listener")
            assert comm.rpc_send("echo", 1).result(T) == 1
            assert await bounded(comm.rpc_send("echo", 2)) == 2  # awaiting the future works as well
            assert comm.broadcast_send("hello").result(T) is True
            assert heard.wait(T)
            ctl = RemoteProcessThreadController(comm)
            assert ctl.launch_process(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}).result(T) == {"sum": 3}
            pid = ctl.launch_process(procs.Waiter, init_kwargs={"inputs": {}}, nowait=True).result(T)
            assert ctl.get_status(pid).result(T)["pid"] == pid
            assert ctl.kill_process(pid).result(T) is True
            with pytest.raises(process_comms.ProcessUnreachable):
                ctl.get_status(uuid.uuid4()).result(T)
            comm.remove_rpc_subscriber("echo")
            comm.remove_broadcast_subscriber("listener")
            with pytest.raises(process_comms.ProcessUnreachable):
                comm.rpc_send("echo", 3).result(T)
        finally:
            launcher.close()
            comm.close()  # closing from inside the loop joins the loop thread, which never needs this loop
        with pytest.raises(process_comms.CommunicatorClosed):
            comm.add_rpc_subscriber(lambda _c, msg: msg, "late")

    try:
        asyncio.run(main())
    finally:
        if worker is not None:
            worker.close()


def test_connect_async_inside_a_running_event_loop(backend: str, names: dict[str, str]) -> None:
    url, options = target(backend, names)

    async def main() -> None:
        comm = await bounded(process_comms.connect_async(url, **options))
        try:
            comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")
            assert await bounded(comm.rpc_send("echo", {"n": 1})) == {"n": 1}
        finally:
            comm.close()

    asyncio.run(main())


def test_blocking_calls_on_the_communicators_own_loop_are_a_deadlock_error(comm: ThreadCommunicator) -> None:
    """A blocking call that would wait for the loop it runs on fails at once, typed, instead of hanging."""
    comm.add_rpc_subscriber(lambda _c, msg: msg, "echo")

    async def on_the_loop() -> list[str]:
        caught = []
        for call in (
            lambda: comm.add_rpc_subscriber(lambda _c, msg: msg, "inner"),
            lambda: comm.remove_rpc_subscriber("echo"),
            lambda: comm.rpc_send("echo", 1).result(T),
            lambda: RemoteProcessThreadController(comm).get_status("echo").result(T),
        ):
            try:
                call()
            except process_comms.DeadlockError as exc:
                caught.append(type(exc).__name__)
        return caught

    start = time.monotonic()
    assert comm.submit(on_the_loop).result(T) == ["DeadlockError"] * 4
    assert time.monotonic() - start < T / 2
    assert comm.rpc_send("echo", 2).result(T) == 2  # the loop is unharmed, and "echo" still subscribed


# == the 3.10 shims (process_comms._compat): the same behaviour as 3.11's asyncio on every interpreter ==========


def run(coro_fn: Any) -> Any:
    """Run ``coro_fn()`` on a fresh loop, bounded."""
    return asyncio.run(bounded(coro_fn()))


def test_timeout_raises_the_builtin_timeout_error_and_the_task_goes_on() -> None:
    async def main() -> str:
        with pytest.raises(TimeoutError):
            async with _compat.timeout(0.01):
                await asyncio.Event().wait()  # never set
        async with _compat.timeout(None):  # never expires
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the expired deadline left no cancellation behind
        task = asyncio.current_task()
        assert task is not None and _compat.cancelling(task) == 0
        return "went on"

    assert run(main) == "went on"


def test_a_cancellation_inside_a_timeout_block_stays_a_cancellation() -> None:
    async def main() -> None:
        entered = asyncio.Event()

        async def body() -> None:
            async with _compat.timeout(T):
                entered.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)


def test_nested_timeouts_each_answer_for_their_own_deadline() -> None:
    async def main() -> str:
        async with _compat.timeout(T):
            with pytest.raises(TimeoutError):
                async with _compat.timeout(0.01):
                    await asyncio.Event().wait()
            await asyncio.sleep(0)
        return "outer block finished"

    assert run(main) == "outer block finished"


def test_cancelling_tells_the_callers_cancel_from_a_cancelled_awaitable() -> None:
    @_compat.counts_cancellations
    async def who(fut: asyncio.Future[None]) -> str:
        try:
            await fut
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            if _compat.cancelling(task):
                raise
            return "what I awaited was cancelled"
        return "done"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        awaited = loop.create_future()
        task = asyncio.ensure_future(who(awaited))
        await asyncio.sleep(0)  # a loop turn: the task waits on ``awaited``
        awaited.cancel()
        assert await task == "what I awaited was cancelled"
        task = asyncio.ensure_future(who(loop.create_future()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)


def test_timeout_errors_catch_an_expired_wait_for() -> None:
    async def main() -> str:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        except _compat.TIMEOUT_ERRORS:
            return "caught"
        return "not raised"

    assert run(main) == "caught"
