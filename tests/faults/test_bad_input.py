"""Bad input from a raw AMQP peer: each gets one clear error reply and leaves nothing on the broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml

import process_comms
import process_comms.wire.codec
from tests.conftest import BROKER_URL, rabbitmqctl
from tests.procs import Waiter
from tests.waiting import wait_until

from ._support import Workers, controller, delete_broker_objects

pytestmark = pytest.mark.broker  # every test talks to RabbitMQ, some through module-level helpers


class RawPeer:
    """A plain pika client speaking kiwipy's wire format, with a reply queue bound as kiwipy binds it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.conn = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.ch = self.conn.channel()
        self.replies: dict[str, list[Any]] = {}
        self.reply_queues: dict[str, str] = {}
        for kind in ("messages", "tasks"):
            exchange = f"{prefix}.{kind}"
            self.ch.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
            name = f"{exchange}-reply-{uuid.uuid4()}"
            self.ch.queue_declare(name, exclusive=True, arguments={"x-expires": 60000})
            self.ch.queue_bind(name, exchange, routing_key=name)
            self.ch.basic_consume(name, self._on_reply, auto_ack=True)
            self.reply_queues[kind] = name

    def _on_reply(self, _ch: Any, _method: Any, props: Any, body: bytes) -> None:
        self.replies.setdefault(props.correlation_id, []).append(yaml.safe_load(body) if body else None)

    def publish(self, kind: str, routing_key: str, body: bytes, delivery_mode: int = 1) -> str:
        cid = str(uuid.uuid4())
        props = pika.BasicProperties(correlation_id=cid, reply_to=self.reply_queues[kind], delivery_mode=delivery_mode)
        self.ch.basic_publish(f"{self.prefix}.{kind}", routing_key, body, props)
        return cid

    def task(self, body: bytes) -> Any:
        """Publish a raw task body; return the final reply."""
        cid = self.publish("tasks", f"{self.prefix}.process.queue", body, delivery_mode=2)
        return self._final(cid)

    def rpc(self, pid: Any, body: bytes) -> Any:
        cid = self.publish("messages", f"[rpc].{pid}", body)
        return self._final(cid)

    def _final(self, cid: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.conn.process_data_events(0.05)
            for reply in self.replies.get(cid, []):
                if isinstance(reply, dict) and "pending" not in reply:
                    return reply
        raise AssertionError(f"no final reply within {timeout} s (replies: {self.replies.get(cid)})")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One worker subprocess and one raw peer for the whole module (bad input must not hurt either)."""
    prefix = f"pc-bad-{uuid.uuid4().hex[:10]}"
    workers = Workers(prefix, tmp_path_factory.mktemp("bad-input"))
    workers()
    yield prefix
    workers.close()
    delete_broker_objects(prefix)


@pytest.fixture(scope="module")
def peer(prefix: str) -> Iterator[RawPeer]:
    raw = RawPeer(prefix)
    yield raw
    raw.close()


def queue_counts(prefix: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the task queue, as the broker reports them."""
    for line in rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged").splitlines():
        parts = line.split()
        if parts and parts[0] == f"{prefix}.process.queue":
            return int(parts[1]), int(parts[2])
    raise AssertionError("task queue not found")


def dump(obj: Any) -> bytes:
    return process_comms.YamlCodec().encode(obj)


def launch(process_class: str, **args: Any) -> bytes:
    body = {
        "task": "launch",
        "args": {
            "process_class": process_class,
            "persist": False,
            "nowait": True,
            "init_args": None,
            "init_kwargs": None,
            **args,
        },
    }
    return dump((body, False))


BAD_TASKS = {
    "not a pair": (dump({"task": "launch"}), "InvalidTask"),
    "three items": (dump(({"task": "launch"}, False, 1)), "InvalidTask"),
    "not YAML": (b"{{{ not: [yaml", "DecodeError"),
    "empty body": (b"", "InvalidTask"),
    "unknown task type": (dump(({"task": "explode", "args": {}}, False)), "InvalidTask"),
    "args not a mapping": (dump(({"task": "launch", "args": [1]}, False)), "InvalidTask"),
    "unknown module": (launch("no_such_module_xyz:Thing"), "LoadError"),
    "not a Process": (launch("subprocess:Popen", init_args=["true"]), "LoadError"),
    "os.system": (launch("os:system", init_args=["true"]), "LoadError"),
    "outside the allow-list": (launch("examples.quickstart:Countdown"), "LoadError"),
    "arguments that do not fit": (launch("tests.procs:Add", init_kwargs={"bogus": 1}), "InvalidTask"),
    "missing checkpoint": (dump(({"task": "continue", "args": {"pid": str(uuid.uuid4())}}, False)), "PersistenceError"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_bad_task_gets_one_error_reply_and_is_settled(peer: RawPeer, prefix: str, case: str) -> None:
    body, error_type = BAD_TASKS[case]
    reply = peer.task(body)
    assert reply.get("error_type") == error_type, reply
    assert isinstance(reply.get("exception"), str) and reply["exception"]
    assert "host" in reply
    wait_until(lambda: queue_counts(prefix) == (0, 0), 10, "the task queue to be empty")


def test_code_running_yaml_is_refused_and_never_runs(peer: RawPeer, prefix: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"!!python/tuple [!!python/object/apply:os.system ['touch {marker}'], false]".encode()
    reply = peer.task(evil)
    assert reply["error_type"] == "DecodeError"
    with controller(prefix) as ctl:
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(15)
        rpc_reply = peer.rpc(pid, f"!!python/object/apply:os.system ['touch {marker}']".encode())
        assert rpc_reply["error_type"] == "DecodeError"
        ctl.kill_process(pid).result(10)
    wait_until(lambda: queue_counts(prefix) == (0, 0), 10, "the task queue to be empty")
    assert not marker.exists()


def test_oversized_task_is_refused_with_a_reply(peer: RawPeer, prefix: str) -> None:
    blob = b"x" * (process_comms.wire.codec.DEFAULT_MAX_MESSAGE_BYTES + 10)
    huge = b"!!python/tuple [{task: launch, args: {blob: '" + blob + b"'}}, false]"
    reply = peer.task(huge)
    assert reply["error_type"] == "DecodeError"
    assert "exceeds the limit" in reply["exception"]
    wait_until(lambda: queue_counts(prefix) == (0, 0), 10, "the task queue to be empty")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"- just\n- a list\n", "malformed process message"),
        (b"{message: no intent}", "malformed process message"),
        (b"{intent: explode}", "Unknown intent"),
        (b"!!python/name:os.system ''", "refused"),
    ],
)
def test_malformed_rpc_to_a_live_process_gets_an_error_reply(
    peer: RawPeer, prefix: str, body: bytes, expected: str
) -> None:
    with controller(prefix) as ctl:
        pid = ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True).result(15)
        reply = peer.rpc(pid, body)
        assert expected in reply["exception"], reply
        assert ctl.get_status(pid).result(10)["state_name"] in ("running", "waiting")  # still alive
        ctl.kill_process(pid).result(10)


def test_unencodable_arguments_fail_at_the_caller_before_anything_is_sent(peer: RawPeer, prefix: str) -> None:
    with controller(prefix) as ctl:
        with pytest.raises(process_comms.EncodeError):
            ctl.launch_process(Waiter, init_kwargs={"inputs": {"f": object()}}).result(10)
        with pytest.raises(process_comms.EncodeError):
            ctl.pause_process(uuid.uuid4(), "x" * (process_comms.wire.codec.DEFAULT_MAX_MESSAGE_BYTES + 1)).result(10)
    assert queue_counts(prefix) == (0, 0)


@pytest.mark.parametrize("pid", ["*", "#", "a.*", "x.#", ""])
def test_wildcard_pids_never_reach_the_broker(peer: RawPeer, prefix: str, pid: str) -> None:
    with controller(prefix) as ctl:
        with pytest.raises(process_comms.InvalidPid):
            ctl.get_status(pid).result(10)
        with pytest.raises(process_comms.InvalidPid):
            ctl.kill_process(pid).result(10)
