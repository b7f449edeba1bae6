"""The reply rules every back end shares: routing ids, reply interpretation, task envelopes and ``respond``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import kiwipy
import plumpy
import pytest

import process_comms
from process_comms import defaults
from process_comms.transports.base import (
    InvalidTask,
    exception_reply,
    parse_task_envelope,
    reply_outcome,
    respond,
    routing_id,
)

#: Longest pid (in UTF-8 bytes) that still fits ``[rpc].<pid>`` into a routing key.
MAX_PID_BYTES = defaults.MAX_ROUTING_KEY_BYTES - len(defaults.RPC_PREFIX) - 1
TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------------------------------
# routing_id
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pid", "expected"),
    [
        (uuid.UUID("7fc10d11-f540-4696-b868-e7a6cceed24f"), "7fc10d11-f540-4696-b868-e7a6cceed24f"),
        (42, "42"),
        (0, "0"),
        ("a.b.c", "a.b.c"),
        ("plain", "plain"),
        ("x" * MAX_PID_BYTES, "x" * MAX_PID_BYTES),
    ],
    ids=["uuid", "int", "zero", "dotted", "plain", "longest"],
)
def test_routing_id_accepts(pid: Any, expected: str) -> None:
    assert routing_id(pid) == expected


@pytest.mark.parametrize(
    "pid",
    [None, "", "*", "#", "a.*", "a.#.b", "*.b", "x" * (MAX_PID_BYTES + 1), "é" * (MAX_PID_BYTES // 2 + 1)],
    ids=["none", "empty", "star", "hash", "dot-star", "dot-hash", "star-dot", "too-long", "too-long-bytes"],
)
def test_routing_id_refuses(pid: Any) -> None:
    with pytest.raises(process_comms.InvalidPid):
        routing_id(pid)


def test_routing_id_length_counts_bytes_not_characters() -> None:
    two_byte = "é" * (MAX_PID_BYTES // 2)
    assert len(two_byte.encode()) <= MAX_PID_BYTES
    assert routing_id(two_byte) == two_byte
    assert len(("é" * (MAX_PID_BYTES // 2 + 1)).encode()) > MAX_PID_BYTES  # the refused case above is really over


def test_invalid_pid_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        routing_id("*")


# --------------------------------------------------------------------------------------------------------------------
# reply_outcome
# --------------------------------------------------------------------------------------------------------------------


def test_result_reply() -> None:
    assert reply_outcome({"result": {"a": 1}}) == (True, {"a": 1})
    assert reply_outcome({"result": None}) == (True, None)
    assert reply_outcome({"result": False}) == (True, False)
    assert reply_outcome({"result": 5, "host": {"hostname": "vm", "pid": 1}}) == (True, 5)


def test_pending_reply() -> None:
    assert reply_outcome({"pending": None}) == (False, None)
    assert reply_outcome({"pending": None, "host": {"hostname": "vm", "pid": 1}}) == (False, None)


def test_precedence_cancelled_first() -> None:
    reply = {"cancelled": "stopped", "exception": "boom", "result": 1, "pending": None}
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome(reply)
    assert info.value.remote_type == "CancelledError"
    assert info.value.message == "stopped"
    assert not isinstance(info.value, process_comms.ProcessKilled)


def test_cancelled_without_message() -> None:
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"cancelled": None})
    assert info.value.remote_type == "CancelledError"
    assert info.value.message  # a readable default, not "None"
    assert info.value.message != "None"


def test_precedence_exception_over_result_and_pending() -> None:
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"exception": "boom", "result": 1, "pending": None})
    assert info.value.message == "boom"


def test_precedence_result_over_pending() -> None:
    assert reply_outcome({"result": "done", "pending": None}) == (True, "done")


@pytest.mark.parametrize("error_type", ["KilledError", "ProcessKilled"])
def test_killed_maps_to_process_killed(error_type: str) -> None:
    with pytest.raises(process_comms.ProcessKilled) as info:
        reply_outcome({"exception": "killed by user", "error_type": error_type})
    assert info.value.message == "killed by user"
    assert info.value.remote_type == error_type
    assert isinstance(info.value, process_comms.RemoteError)
    assert isinstance(info.value, kiwipy.RemoteException)


@pytest.mark.parametrize("error_type", ["TaskRejected", "LoadError", "InvalidTask", "DecodeError"])
def test_rejected_maps_to_task_rejected(error_type: str) -> None:
    with pytest.raises(process_comms.TaskRejected) as info:
        reply_outcome({"exception": "no such class", "error_type": error_type})
    assert "no such class" in str(info.value)
    assert error_type in str(info.value)
    assert isinstance(info.value, kiwipy.TaskRejected)
    assert not isinstance(info.value, process_comms.RemoteError)


def test_other_error_type_is_remote_error_with_type() -> None:
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"exception": "bad value", "error_type": "ValueError"})
    err = info.value
    assert type(err) is process_comms.RemoteError
    assert err.remote_type == "ValueError"
    assert err.message == "bad value"
    assert str(err) == "ValueError: bad value"
    assert isinstance(err, kiwipy.RemoteException)


def test_plain_kiwipy_exception_reply_has_no_type() -> None:
    """A kiwipy peer sends only ``exception: str(exc)``."""
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"exception": "Unknown intent", "host": {"hostname": "vm", "pid": 3}})
    assert type(info.value) is process_comms.RemoteError
    assert info.value.remote_type is None
    assert str(info.value) == "Unknown intent"


@pytest.mark.parametrize("error_type", [None, 5, ["KilledError"], {"a": 1}])
def test_non_string_error_type_is_ignored(error_type: Any) -> None:
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"exception": "x", "error_type": error_type})
    assert type(info.value) is process_comms.RemoteError
    assert info.value.remote_type is None


def test_exception_value_is_stringified() -> None:
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome({"exception": 404})
    assert info.value.message == "404"


@pytest.mark.parametrize(
    "reply", [None, [], ["result", 1], "result", b"result: 1", 5, ("result", 1)], ids=lambda r: type(r).__name__
)
def test_non_dict_reply_is_decode_error(reply: Any) -> None:
    with pytest.raises(process_comms.DecodeError):
        reply_outcome(reply)


@pytest.mark.parametrize("reply", [{}, {"host": {"hostname": "vm", "pid": 1}}, {"results": 1}, {1: 2}])
def test_reply_without_known_key_is_decode_error(reply: dict[Any, Any]) -> None:
    with pytest.raises(process_comms.DecodeError):
        reply_outcome(reply)


# --------------------------------------------------------------------------------------------------------------------
# exception_reply and its round trip through reply_outcome
# --------------------------------------------------------------------------------------------------------------------


def test_exception_reply_carries_str_and_type() -> None:
    assert exception_reply(ValueError("bad")) == {"exception": "bad", "error_type": "ValueError"}
    assert exception_reply(KeyError("k")) == {"exception": "'k'", "error_type": "KeyError"}


def test_exception_reply_of_empty_message_uses_type_name() -> None:
    assert exception_reply(RuntimeError()) == {"exception": "RuntimeError", "error_type": "RuntimeError"}


def test_exception_reply_of_remote_error_keeps_remote_type() -> None:
    assert exception_reply(process_comms.RemoteError("inner", "ZeroDivisionError")) == {
        "exception": "inner",
        "error_type": "ZeroDivisionError",
    }


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (plumpy.KilledError("killed by user"), process_comms.ProcessKilled),
        (process_comms.ProcessKilled("killed", "KilledError"), process_comms.ProcessKilled),
        (kiwipy.TaskRejected("nope"), process_comms.TaskRejected),
        (process_comms.TaskRejected("nope"), process_comms.TaskRejected),
        (process_comms.LoadError("x:Y not allowed"), process_comms.TaskRejected),
        (InvalidTask("not a pair"), process_comms.TaskRejected),
        (ZeroDivisionError("division by zero"), process_comms.RemoteError),
    ],
    ids=["plumpy-killed", "process-killed", "kiwipy-rejected", "rejected", "load-error", "invalid-task", "other"],
)
def test_exception_reply_round_trip(exc: BaseException, expected: type[BaseException]) -> None:
    with pytest.raises(expected) as info:
        reply_outcome(exception_reply(exc))
    if expected is process_comms.RemoteError:
        assert type(info.value) is process_comms.RemoteError
        assert info.value.remote_type == type(exc).__name__  # type: ignore[attr-defined]
        assert info.value.message == str(exc)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------------------------
# parse_task_envelope
# --------------------------------------------------------------------------------------------------------------------

TASK = {"task": "continue", "args": {"pid": 1, "nowait": False, "tag": None}}


@pytest.mark.parametrize("no_reply", [True, False])
def test_envelope_tuple(no_reply: bool) -> None:
    task, flag = parse_task_envelope((TASK, no_reply))
    assert task is TASK
    assert flag is no_reply


def test_envelope_list_pair_from_json() -> None:
    decoded = process_comms.JsonCodec().decode(b'[{"task": "launch", "args": {}}, true]')
    assert parse_task_envelope(decoded) == ({"task": "launch", "args": {}}, True)


def test_envelope_round_trip_through_yaml() -> None:
    codec = process_comms.YamlCodec()
    assert parse_task_envelope(codec.decode(codec.encode((TASK, False)))) == (TASK, False)


@pytest.mark.parametrize(
    "decoded",
    [
        {"task": TASK, "no_reply": False},
        {"a": 1, "b": 2},
        (TASK, False, None),
        (TASK,),
        (),
        [],
        "ab",
        b"ab",
        None,
        TASK,
    ],
    ids=["dict", "two-key-dict", "triple", "single", "empty-tuple", "empty-list", "str", "bytes", "none", "bare-task"],
)
def test_envelope_not_a_pair_refused(decoded: Any) -> None:
    with pytest.raises(InvalidTask):
        parse_task_envelope(decoded)


@pytest.mark.parametrize("no_reply", [0, 1, None, "false", "true", [], 0.0])
def test_envelope_non_bool_no_reply_refused(no_reply: Any) -> None:
    with pytest.raises(InvalidTask):
        parse_task_envelope((TASK, no_reply))


# --------------------------------------------------------------------------------------------------------------------
# respond
# --------------------------------------------------------------------------------------------------------------------


class Recorder:
    """A ``send`` callable that records every reply it is given."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.on_send: Callable[[dict[str, Any]], None] | None = None

    async def __call__(self, reply: dict[str, Any]) -> None:
        self.sent.append(reply)
        if self.on_send is not None:
            self.on_send(reply)


def run(coro_factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a fresh loop, bounded so a hang fails instead of blocking the suite."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_factory(), TIMEOUT)

    return asyncio.run(bounded())


def test_plain_value_no_pending() -> None:
    send = Recorder()
    reply = run(lambda: respond(lambda: {"x": 1}, send))
    assert reply == {"result": {"x": 1}}
    assert send.sent == []


def test_plain_none_value() -> None:
    send = Recorder()
    assert run(lambda: respond(lambda: None, send)) == {"result": None}
    assert send.sent == []


def test_value_not_called_when_call_false() -> None:
    send = Recorder()
    marker = object()
    assert run(lambda: respond(marker, send, call=False)) == {"result": marker}
    assert send.sent == []


def test_future_sends_one_pending_then_result() -> None:
    send = Recorder()

    async def scenario() -> dict[str, Any]:
        fut = asyncio.get_running_loop().create_future()
        states: list[bool] = []
        send.on_send = lambda _reply: (states.append(fut.done()), fut.set_result("done"))
        reply = await respond(lambda: fut, send)
        assert states == [False]  # the pending went out before the value was known
        return reply

    assert run(scenario) == {"result": "done"}
    assert send.sent == [{"pending": None}]


def test_nested_future_sends_two_pendings() -> None:
    send = Recorder()

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        outer, inner = loop.create_future(), loop.create_future()
        loop.call_soon(outer.set_result, inner)
        loop.call_soon(loop.call_soon, inner.set_result, 42)
        return await respond(lambda: outer, send)

    assert run(scenario) == {"result": 42}
    assert send.sent == [{"pending": None}, {"pending": None}]


def test_concurrent_future_and_coroutine_are_awaited() -> None:
    send = Recorder()

    async def answer() -> concurrent.futures.Future[str]:
        cfut: concurrent.futures.Future[str] = concurrent.futures.Future()
        cfut.set_result("thread-future")
        return cfut

    # a coroutine resolving to a concurrent future: two levels
    assert run(lambda: respond(answer, send)) == {"result": "thread-future"}
    assert send.sent == [{"pending": None}, {"pending": None}]


def test_no_send_still_resolves_futures() -> None:
    async def scenario() -> dict[str, Any]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(7)
        return await respond(lambda: fut, None)

    assert run(scenario) == {"result": 7}


def test_raising_handler_gives_exception_reply() -> None:
    send = Recorder()

    def handler() -> Any:
        raise ValueError("bad input")

    assert run(lambda: respond(handler, send)) == {"exception": "bad input", "error_type": "ValueError"}
    assert send.sent == []


def test_killed_handler_reply_maps_back_to_process_killed() -> None:
    def handler() -> Any:
        raise plumpy.KilledError("killed by user")

    reply = run(lambda: respond(handler, Recorder()))
    assert reply == {"exception": "killed by user", "error_type": "KilledError"}
    with pytest.raises(process_comms.ProcessKilled):
        reply_outcome(reply)


def test_failing_future_gives_pending_then_exception() -> None:
    send = Recorder()

    async def scenario() -> dict[str, Any]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(KeyError("missing-pid"))
        return await respond(lambda: fut, send)

    assert run(scenario) == {"exception": "'missing-pid'", "error_type": "KeyError"}
    assert send.sent == [{"pending": None}]


@pytest.mark.parametrize(("msg", "expected"), [(None, None), ("stopped by user", "stopped by user")])
def test_cancelled_future_gives_cancelled_reply(msg: str | None, expected: str | None) -> None:
    send = Recorder()

    async def scenario() -> dict[str, Any]:
        fut = asyncio.get_running_loop().create_future()
        fut.cancel(msg)
        return await respond(lambda: fut, send)

    reply = run(scenario)
    assert reply == {"cancelled": expected}
    assert send.sent == [{"pending": None}]
    with pytest.raises(process_comms.RemoteError) as info:
        reply_outcome(reply)
    assert info.value.remote_type == "CancelledError"


def test_cancelled_concurrent_future_gives_cancelled_reply() -> None:
    send = Recorder()
    cfut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    assert cfut.cancel()
    reply = run(lambda: respond(lambda: cfut, send))
    assert set(reply) == {"cancelled"}
    assert send.sent == [{"pending": None}]


def test_cancelling_the_caller_propagates() -> None:
    """Only cancellation of the calling task itself escapes ``respond``; nothing is turned into a reply."""
    send = Recorder()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        never = loop.create_future()
        pending_sent = asyncio.Event()
        send.on_send = lambda _reply: pending_sent.set()
        task = asyncio.ensure_future(respond(lambda: never, send))
        await pending_sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    run(scenario)
    assert send.sent == [{"pending": None}]


def test_handler_base_exception_is_not_swallowed() -> None:
    class Fatal(BaseException):
        pass

    def handler() -> Any:
        raise Fatal

    with pytest.raises(Fatal):
        run(lambda: respond(handler, Recorder()))


# --------------------------------------------------------------------------------------------------------------------
# retired RPC subscribers
# --------------------------------------------------------------------------------------------------------------------


def test_a_removed_rpc_subscriber_answers_late_requests_then_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    # a worker kept the last 1,024 removed subscribers for good, and with each its ended process (found
    # measuring a worker's memory after 10,000 processes ended: benchmarks/workloads/scale.py)
    import weakref

    from process_comms.transports import base
    from process_comms.transports.embedded import EmbeddedCommunicator

    class Subscriber:
        def __call__(self, _comm: Any, msg: Any) -> Any:
            return {"answered": msg}

    async def main() -> tuple[list[dict[str, Any]], bool, bool]:
        comm = EmbeddedCommunicator()
        await comm.connect()
        subscriber = Subscriber()
        alive = weakref.ref(subscriber)
        key = await comm.add_rpc_subscriber(subscriber, "late")
        await comm.remove_rpc_subscriber(key)
        del subscriber
        send = Recorder()
        await comm._handle_rpc(key, comm.codec.encode("routed before the unbind"), send)
        kept = alive() is not None
        for _ in range(3):  # the let-go timer is due at once (RETIRED_RPC_SECONDS = 0): a few loop turns
            await asyncio.sleep(0)
        let_go = alive() is None
        await comm.close()
        return send.sent, kept, let_go

    monkeypatch.setattr(base, "RETIRED_RPC_SECONDS", 0.0)
    sent, kept, let_go = run(main)
    assert sent == [{"result": {"answered": "routed before the unbind"}}]
    assert kept and let_go
