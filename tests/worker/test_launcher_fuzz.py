"""Fuzzing ``ProcessLauncher``: arbitrary task bodies are refused with a typed error or run to an outcome.

Whatever a task body holds, the launcher either refuses it at once (``InvalidTask``, ``LoadError`` or
``kiwipy.TaskRejected``) or returns a future that settles within a deadline with a result or an
ordinary ``Exception``; it never instantiates a class outside its allowed modules, and the worker keeps
answering valid launches after any amount of garbage. Runs on the embedded communicator (no broker).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kiwipy
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import process_comms
import process_comms.client.futures
from process_comms import InMemoryPersister, LoadError, Process, ProcessLauncher, create_launch_body
from process_comms.transports.base import InvalidTask, ReplyWaiter
from process_comms.transports.loop import run_on
from process_comms.wire import codec as codec_module
from tests import procs

T = 10.0
ALLOWED = "tests.procs"

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WIRE_SETTINGS = settings(SETTINGS, max_examples=100)

TASK_KEYS = ["task", "args", "process_class", "init_args", "init_kwargs", "persist", "nowait", "pid", "tag"]
CLASSES = [
    "tests.procs:Add",
    "tests.procs:Fails",
    "os:system",
    "subprocess:Popen",
    "builtins:dict",
    "no_such_mod:X",
    "tests.procs",
    ":",
    # allowed module, but not a Process subclass (attribute walks to a function, a class, a module)
    "tests.procs:os.system",
    "tests.procs:Path",
    "tests.procs:asyncio",
    "tests.procs.nothing:Add",
]
SYNC_REFUSALS = (InvalidTask, LoadError, kiwipy.TaskRejected)

# -- strategies ------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)
keys = st.one_of(st.sampled_from(TASK_KEYS), st.text(max_size=10))


def often(strategy: st.SearchStrategy[Any], weight: int, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy`` about ``weight`` times as often as ``other`` (so most bodies get past validation)."""
    return st.sampled_from(range(weight + 1)).flatmap(lambda i: other if i == 0 else strategy)


pids = st.one_of(st.integers(0, 3), st.uuids(), st.text(max_size=12), values)  # small ints: pids recur
inputs = often(
    st.fixed_dictionaries({"a": st.integers(), "b": st.integers()}),
    2,
    st.one_of(
        st.fixed_dictionaries({}, optional={"a": values, "b": values}),
        values,
    ),
)
init_kwargs = often(
    st.fixed_dictionaries({"inputs": inputs}, optional={"pid": pids}),
    3,
    st.one_of(st.none(), st.dictionaries(keys, values, max_size=4), values),
)
init_args = often(
    st.none(),
    3,
    st.one_of(st.lists(st.one_of(inputs, pids), max_size=3), values),
)
args = st.fixed_dictionaries(
    {  # a None value here is as good as a missing key: the launcher reads them with .get()
        "process_class": often(st.sampled_from(CLASSES[:2]), 2, st.one_of(st.sampled_from(CLASSES), st.text(), values)),
        "pid": often(pids, 4, st.none()),
        "init_args": init_args,
        "init_kwargs": init_kwargs,
    },
    optional={
        "persist": often(st.just(False), 2, st.one_of(st.booleans(), values)),
        "nowait": often(st.booleans(), 3, values),
        "tag": often(st.none(), 3, st.one_of(st.text(max_size=10), values)),
    },
).flatmap(lambda d: st.dictionaries(keys, values, max_size=2).map(lambda extra: {**extra, **d}))
task_names = often(st.sampled_from(["launch", "launch", "create", "continue"]), 4, st.text(max_size=10))
structured_tasks = st.builds(
    lambda name, a, extra: {**extra, "task": name, "args": a},
    task_names,
    often(args, 4, values),
    st.dictionaries(keys, values, max_size=2),
)
task_bodies = often(
    structured_tasks,
    4,  # most bodies look like tasks; the rest are any mapping or value
    st.one_of(st.dictionaries(keys, values, max_size=6), values),
)


# -- fixtures --------------------------------------------------------------------------------------
@dataclass
class Worker:
    comm: process_comms.ThreadCommunicator
    launcher: ProcessLauncher
    loaded: list[Any] = field(default_factory=list)


def _record_loads(launcher: ProcessLauncher, loaded: list[Any]) -> None:
    """Wrap this launcher's class loading (test side only) to see every class it would instantiate."""
    load = launcher._load_class

    def recording(identifier: Any) -> type[Process]:
        cls = load(identifier)
        loaded.append(cls)
        return cls

    launcher._load_class = recording  # type: ignore[method-assign]


@pytest.fixture
def worker() -> Iterator[Worker]:
    """An embedded communicator and a launcher allowed ``tests.procs`` only (not subscribed)."""
    comm = process_comms.connect()
    launcher = ProcessLauncher(persister=InMemoryPersister(), allowed_modules=[ALLOWED])
    w = Worker(comm, launcher)
    _record_loads(launcher, w.loaded)
    try:
        yield w
    finally:
        launcher.close()
        comm.close()


@pytest.fixture
def subscribed(worker: Worker) -> Worker:
    """The same worker, taking tasks from its communicator's queue."""
    worker.comm.add_task_subscriber(worker.launcher)
    return worker


async def _kill_live(launcher: ProcessLauncher) -> None:
    """Kill every process still running (on the launcher's loop, where its process table lives)."""
    for proc in launcher.processes.values():
        await proc.kill("fuzz")


async def _kill_all(launcher: ProcessLauncher) -> None:
    await asyncio.wait({asyncio.wrap_future(run_on(launcher.loop, _kill_live, launcher))}, timeout=T)


def _kill_all_blocking(launcher: ProcessLauncher) -> None:
    run_on(launcher.loop, _kill_live, launcher).result(T)


def _check_loaded(w: Worker) -> None:
    for cls in w.loaded:
        assert isinstance(cls, type) and issubclass(cls, Process), cls
        assert cls.__module__ == ALLOWED, f"loaded {cls!r} from outside {ALLOWED}"


def _valid_launch(w: Worker) -> Any:
    body = create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=False)
    return w.comm.task_send(body, timeout=T).result(T + 2)


def _expect_error_reply(fut: concurrent.futures.Future[Any]) -> process_comms.ProcessCommsError:
    """The task's reply is a typed error, and not the deadline (a hang is not an answer)."""
    with pytest.raises(process_comms.ProcessCommsError) as info:
        fut.result(T + 2)
    assert not isinstance(info.value, process_comms.TimeoutError), "no reply to the task within the deadline"
    return info.value


# -- 1. the launcher, called directly on the communicator's loop --------------------------------------
async def _call_launcher(w: Worker, task: Any) -> tuple[str, Any]:
    """The outcome: ``rejected``, ``result``, ``error``, ``cancelled`` or ``hang``, with its detail."""
    try:
        try:
            fut = w.launcher(w.comm, task)
        except SYNC_REFUSALS as exc:
            return "rejected", exc
        assert isinstance(fut, concurrent.futures.Future)
        wrapped = asyncio.wrap_future(fut)
        done, _ = await asyncio.wait({wrapped}, timeout=T)
        if not done:
            return "hang", fut
        if wrapped.cancelled():
            return "cancelled", None
        exc = wrapped.exception()
        return ("error", exc) if exc is not None else ("result", wrapped.result())
    finally:
        await _kill_all(w.launcher)


@SETTINGS
@given(task=task_bodies)
def test_any_task_body_is_refused_or_settles(worker: Worker, task: Any) -> None:
    worker.loaded.clear()
    outcome, detail = worker.comm.loop_thread.run_sync(_call_launcher, worker, task, timeout=T + 5)
    kind = task.get("task") if isinstance(task, dict) else None
    event(f"{kind if kind in ('launch', 'create', 'continue') else 'other'} -> {outcome}: {type(detail).__name__}")
    assert outcome in ("rejected", "result", "error"), (outcome, detail)
    if outcome == "error":
        assert isinstance(detail, Exception), repr(detail)
    _check_loaded(worker)

    a = task.get("args") if isinstance(task, dict) else None
    if isinstance(task, dict) and task.get("task") in ("launch", "create") and isinstance(a, dict):
        identifier = a.get("process_class")
        if not (isinstance(identifier, str) and identifier.startswith(ALLOWED + ":")):
            # refused before anything is imported or instantiated
            assert outcome == "rejected" and isinstance(detail, LoadError), (outcome, detail)
            assert not worker.loaded


# -- 2. over the wire: any value or byte string as a task on the embedded communicator --------------
def _check_wire_outcome(fut: concurrent.futures.Future[Any]) -> None:
    try:
        fut.result(T + 2)
    except (TimeoutError, concurrent.futures.TimeoutError):  # the library's deadline, or our own wait (3.10)
        pytest.fail("no reply to the task within the deadline")
    except process_comms.ProcessCommsError as exc:
        event(f"error: {type(exc).__name__}: {str(exc).split(':')[0]}")
    else:
        event("result")


@WIRE_SETTINGS
@given(body=st.one_of(task_bodies, values))
def test_any_task_value_sent_over_the_wire_gets_a_reply(subscribed: Worker, body: Any) -> None:
    subscribed.loaded.clear()
    _check_wire_outcome(subscribed.comm.task_send(body, timeout=T))
    _kill_all_blocking(subscribed.launcher)
    _check_loaded(subscribed)
    assert _valid_launch(subscribed) == {"sum": 3}


async def _send_raw(core: Any, body: bytes) -> Any:
    """``EmbeddedCommunicator.task_send`` minus the encoding: queue raw bytes as a task body."""
    waiter = ReplyWaiter(asyncio.get_running_loop())
    core._tasks.append((body, waiter, False, str(uuid.uuid4())))
    core._pump()
    return await core._await_waiter(waiter)


def _envelope(task: Any, no_reply: Any) -> bytes:
    return process_comms.YamlCodec().encode((task, no_reply))


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet="-:[]{}!&*?|>'\"%@`#,\n abc01", max_size=60).map(str.encode),
    st.builds(_envelope, task_bodies, st.one_of(st.booleans(), values)),
    values.map(lambda v: process_comms.YamlCodec().encode(v)),
)


@WIRE_SETTINGS
@given(body=raw_bodies)
def test_any_bytes_as_a_task_body_get_a_reply(subscribed: Worker, body: bytes) -> None:
    subscribed.loaded.clear()
    comm = subscribed.comm
    _check_wire_outcome(
        comm.submit(lambda: process_comms.client.futures.with_deadline(_send_raw(comm.core, body), T, "raw task"))
    )
    _kill_all_blocking(subscribed.launcher)
    _check_loaded(subscribed)
    assert _valid_launch(subscribed) == {"sum": 3}


# -- 3. garbage does not poison the worker ------------------------------------------------------------
MALFORMED: list[Any] = [
    None,
    42,
    "launch",
    [1, 2],
    {},
    {"task": None},
    {"task": 1, "args": {}},
    {"task": "explode", "args": {}},
    {"task": "launch"},
    {"task": "launch", "args": None},
    {"task": "launch", "args": []},
    {"task": "launch", "args": {}},
    {"task": "launch", "args": {"process_class": None}},
    {"task": "launch", "args": {"process_class": 7}},
    {"task": "launch", "args": {"process_class": "os:system", "init_args": ["echo pwned"]}},
    {"task": "launch", "args": {"process_class": "subprocess:Popen"}},
    {"task": "launch", "args": {"process_class": "builtins:dict"}},
    {"task": "launch", "args": {"process_class": "no_such_mod:X"}},
    {"task": "launch", "args": {"process_class": "tests.procs"}},
    {"task": "launch", "args": {"process_class": ":"}},
    {"task": "launch", "args": {"process_class": "tests.procs:os.system"}},
    {"task": "launch", "args": {"process_class": "tests.procs:Path"}},
    {"task": "launch", "args": {"process_class": "tests.procs:Nope"}},
    {"task": "launch", "args": {"process_class": "tests.procs.sub:Add"}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": "ab"}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": 5}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": [1]}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"bogus": 1}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": [1, 2, 3, 4]}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": ["abc"]}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"inputs": 3}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"inputs": {"a": 1}}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"inputs": {"a": 1, "b": "x"}}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"pid": "*"}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"pid": ""}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"pid": "x" * 300}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "persist": True, "init_kwargs": {"pid": [1]}}},
    {"task": "launch", "args": {"process_class": "tests.procs:Fails"}},
    {"task": "create", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"x": 1}}},
    {"task": "create", "args": {"process_class": "os:system"}},
    {"task": "continue", "args": {}},
    {"task": "continue", "args": {"pid": None}},
    {"task": "continue", "args": {"pid": uuid.uuid4()}},
    {"task": "continue", "args": {"pid": [1, 2]}},
    {"task": "continue", "args": {"pid": 1, "tag": 5}},
    {"task": "continue", "args": {"pid": {"a": 1}}},
    {"task": ["launch"], "args": {}},
    {"args": {"process_class": "tests.procs:Add"}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": [None, None, None]}},
    {"task": "launch", "args": {"process_class": "tests.procs:Add", "init_args": [{"a": 1, "b": 2}, "*"]}},
]


def test_fifty_malformed_tasks_do_not_poison_the_launcher(subscribed: Worker) -> None:
    assert len(MALFORMED) == 50
    for body in MALFORMED:
        error = _expect_error_reply(subscribed.comm.task_send(body, timeout=T))
        assert isinstance(error, (process_comms.TaskRejected, process_comms.RemoteError)), (body, error)
    _kill_all_blocking(subscribed.launcher)
    _check_loaded(subscribed)
    assert _valid_launch(subscribed) == {"sum": 3}


# -- 4. known bug: a tiny aliased YAML task stalls the worker -------------------------------------------
class _AnchoringPeerCodec(process_comms.YamlCodec):
    """Writes block YAML with anchors and aliases, as a kiwipy peer's ``yaml.dump`` does; reads as ours."""

    def encode(self, obj: Any) -> bytes:
        data: bytes = yaml.dump(obj, Dumper=codec_module._SafeDumper, encoding="utf-8")
        return data


def test_a_small_aliased_task_does_not_stall_the_worker() -> None:
    pid: Any = ["x"]
    for _ in range(7):
        pid = [pid] * 10  # shared references: a peer's YAML dumper writes anchors and aliases
    bomb = create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}, "pid": pid}, nowait=True)
    with pytest.raises(process_comms.EncodeError, match="exceeds the limit"):
        process_comms.YamlCodec().encode((bomb, False))  # ours writes it out in full: refused when sent
    peer = _AnchoringPeerCodec()
    assert len(peer.encode((bomb, False))) < 4096
    launcher = ProcessLauncher(persister=InMemoryPersister(), allowed_modules=[ALLOWED])
    with process_comms.connect(codec=peer) as comm:
        comm.add_task_subscriber(launcher)
        started = time.monotonic()
        bomb_reply = comm.task_send(bomb, timeout=60)
        valid = create_launch_body(procs.Add, init_kwargs={"inputs": {"a": 1, "b": 2}}, nowait=False)
        assert comm.task_send(valid, timeout=60).result(62) == {"sum": 3}
        elapsed = time.monotonic() - started
        with pytest.raises(process_comms.ProcessCommsError):
            bomb_reply.result(62)  # its aliases expand past the decoder's limit
    launcher.close()
    assert elapsed < 1.0, f"a valid launch queued behind the aliased task took {elapsed:.1f} s"


def test_a_failing_create_logs_no_callback_error(subscribed: Worker, caplog: pytest.LogCaptureFixture) -> None:
    body = {"task": "create", "args": {"process_class": "tests.procs:Add", "init_kwargs": {"x": 1}}}
    with caplog.at_level(logging.ERROR):
        assert isinstance(_expect_error_reply(subscribed.comm.task_send(body, timeout=T)), process_comms.TaskRejected)
    assert not [r for r in caplog.records if r.name == "concurrent.futures"], caplog.text
