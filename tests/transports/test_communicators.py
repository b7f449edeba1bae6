"""Both back ends of connect() deliver RPC, broadcast and task messages with the same semantics."""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from typing import Any

import pytest

import process_comms
from process_comms import BroadcastFilter
from tests.conftest import BROKER_URL, broker_url_as, rmq_options

T = 10.0


def test_rpc_round_trip_keeps_types(comm_factory: Any) -> None:
    server, client = comm_factory(), comm_factory()
    pid = uuid.uuid4()
    server.add_rpc_subscriber(lambda _c, msg: {"echo": msg, "pid": pid, "pair": (1, 2)}, pid)
    result = client.rpc_send(pid, {"intent": "status", "message": None}).result(T)
    assert result == {"echo": {"intent": "status", "message": None}, "pid": pid, "pair": (1, 2)}
    assert isinstance(result["pid"], uuid.UUID)


def test_rpc_to_unknown_pid_is_unreachable_through_the_future(comm: Any) -> None:
    fut = comm.rpc_send(uuid.uuid4(), {"intent": "status"})
    assert isinstance(fut, concurrent.futures.Future)
    with pytest.raises(process_comms.ProcessUnreachable, match="not reachable"):
        fut.result(T)


def test_rpc_subscriber_exception_is_a_typed_remote_error(comm_factory: Any) -> None:
    server, client = comm_factory(), comm_factory()

    def boom(_c: Any, _msg: Any) -> None:
        raise KeyError("nope")

    server.add_rpc_subscriber(boom, "boom")
    with pytest.raises(process_comms.RemoteError) as info:
        client.rpc_send("boom", {}).result(T)
    assert info.value.remote_type == "KeyError"
    assert "nope" in str(info.value)


def test_rpc_future_result_is_flat_after_pending(comm_factory: Any) -> None:
    server, client = comm_factory(), comm_factory()
    inner: concurrent.futures.Future[Any] = concurrent.futures.Future()
    server.add_rpc_subscriber(lambda _c, _m: inner, "later")
    fut = client.rpc_send("later", {})
    inner.set_result("done")
    assert fut.result(T) == "done"


def test_unencodable_reply_fails_the_call(comm_factory: Any) -> None:
    server, client = comm_factory(), comm_factory()
    server.add_rpc_subscriber(lambda _c, _m: object(), "weird")
    with pytest.raises(process_comms.RemoteError) as info:
        client.rpc_send("weird", {}).result(T)
    assert info.value.remote_type == "EncodeError"


def test_unencodable_arguments_fail_before_sending(comm: Any) -> None:
    with pytest.raises(process_comms.EncodeError):
        comm.rpc_send("anyone", {"x": object()}).result(T)


@pytest.mark.parametrize("pid", ["a*b", "#", "", "*"])
def test_wildcard_pids_are_refused(comm: Any, pid: str) -> None:
    with pytest.raises(process_comms.InvalidPid):
        comm.rpc_send(pid, {}).result(T)


def test_duplicate_rpc_subscriber_is_refused(comm: Any) -> None:
    comm.add_rpc_subscriber(lambda _c, _m: None, "dup")
    with pytest.raises(process_comms.DuplicateSubscriber):
        comm.add_rpc_subscriber(lambda _c, _m: None, "dup")


def test_removed_rpc_subscriber_is_unreachable(comm_factory: Any) -> None:
    server, client = comm_factory(), comm_factory()
    server.add_rpc_subscriber(lambda _c, _m: 1, "gone")
    assert client.rpc_send("gone", {}).result(T) == 1
    server.remove_rpc_subscriber("gone")
    with pytest.raises(process_comms.ProcessUnreachable):
        client.rpc_send("gone", {}).result(T)


def test_broadcast_reaches_every_subscriber_with_filters(comm_factory: Any) -> None:
    a, b = comm_factory(), comm_factory()
    got: list[tuple[str, Any]] = []
    lock = threading.Lock()
    both = threading.Event()

    def on(name: str) -> Any:
        def receive(_c: Any, body: Any, sender: Any, subject: Any, _cid: Any) -> None:
            with lock:
                got.append((name, subject))
                if len(got) >= 2:
                    both.set()

        return receive

    a.add_broadcast_subscriber(BroadcastFilter(on("a"), subject="state_changed.*.finished"))
    b.add_broadcast_subscriber(on("b"))
    assert a.broadcast_send(None, sender="p", subject="state_changed.running.finished").result(T) is True
    assert both.wait(T)
    assert sorted(got) == [("a", "state_changed.running.finished"), ("b", "state_changed.running.finished")]


def test_task_round_trip_and_no_reply(comm_factory: Any) -> None:
    worker, client = comm_factory(), comm_factory()
    seen = threading.Event()

    def handle(_c: Any, task: Any) -> Any:
        if task.get("quiet"):
            seen.set()
        return task["x"] * 2

    worker.add_task_subscriber(handle)
    assert client.task_send({"x": 21}).result(T) == 42
    assert client.task_send({"x": 1, "quiet": True}, no_reply=True).result(T) is None
    assert seen.wait(T)


def test_task_rejected_by_every_subscriber_gets_one_terminal_reply(comm_factory: Any) -> None:
    worker, client = comm_factory(), comm_factory()
    calls: list[int] = []

    def reject(_c: Any, _task: Any) -> Any:
        calls.append(1)
        raise process_comms.TaskRejected("not mine")

    worker.add_task_subscriber(reject)
    with pytest.raises(process_comms.TaskRejected):
        client.task_send({"x": 1}).result(T)
    assert len(calls) <= 4  # bounded: one redelivery per subscriber at most (no ping-pong)


def test_task_waits_in_queue_until_a_worker_subscribes(comm_factory: Any) -> None:
    worker, client = comm_factory(), comm_factory()
    fut = client.task_send({"x": 5})
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(0.2)
    worker.add_task_subscriber(lambda _c, t: t["x"] + 1)
    assert fut.result(T) == 6


def test_close_is_idempotent_fails_calls_in_flight_and_stops_the_thread(backend: str, names: dict[str, str]) -> None:
    url = None if backend == "embedded" else BROKER_URL
    comm = process_comms.connect(url, **({} if url is None else rmq_options(names)))
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    comm.add_rpc_subscriber(lambda _c, _m: never, "slow")
    fut = comm.rpc_send("slow", {})
    thread = comm.loop_thread.thread
    comm.close()
    comm.close()
    assert not thread.is_alive()
    with pytest.raises(process_comms.CommunicatorClosed):
        fut.result(T)
    with pytest.raises(process_comms.CommunicatorClosed):
        comm.rpc_send("slow", {}).result(T)


def test_deadline_fires_for_a_silent_subscriber(comm: Any) -> None:
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    comm.add_rpc_subscriber(lambda _c, _m: never, "silent")
    with pytest.raises(process_comms.TimeoutError):
        comm.rpc_send("silent", {}, timeout=0.3).result(T)


def test_blocking_on_a_future_from_the_loop_thread_raises(comm: Any) -> None:
    comm.add_rpc_subscriber(lambda _c, _m: 1, "one")
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def on_loop_thread() -> None:
        try:
            outcome.set_result(comm.rpc_send("one", {}).result(1))
        except BaseException as exc:  # noqa: BLE001
            outcome.set_exception(exc)

    comm.loop.call_soon_threadsafe(on_loop_thread)
    with pytest.raises(process_comms.DeadlockError):
        outcome.result(T)


def test_bad_credentials_fail_at_connect_with_a_masked_url(broker_url: str) -> None:
    with pytest.raises(process_comms.BrokerUnavailable) as info:
        process_comms.connect(broker_url_as("guest", "wrong-secret"), connect_timeout=5)
    assert "wrong-secret" not in str(info.value)
    assert "***" in str(info.value)


def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(process_comms.BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        process_comms.connect("amqp://guest:guest@127.0.0.1:1/", connect_timeout=2)


def test_heartbeat_option_reaches_the_broker(broker_url: str, names: dict[str, str]) -> None:
    from tests.conftest import rabbitmqctl

    with process_comms.connect(broker_url, heartbeat=17, **rmq_options(names)):
        timeouts = rabbitmqctl("list_connections", "timeout").split()
    assert "17" in timeouts
