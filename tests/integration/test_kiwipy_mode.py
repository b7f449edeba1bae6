"""``connect(..., api="kiwipy")`` held to kiwipy 0.9's own semantics (``src/kiwipy/rmq/threadcomms.py``,
``communicator.py``, ``tasks.py`` and ``test/utils.py``'s ``CommunicatorTester``), with real kiwipy peers, on
the real broker; plus kiwipy's ``connect`` keywords, and close() handing over what a communicator sent to its
own subscribers. Every wait is bounded by ``T``.
"""

from __future__ import annotations

import concurrent.futures
import fractions
import functools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import kiwipy
import kiwipy.rmq
import pika
import plumpy
import pytest
import yaml

import process_comms
from tests.conftest import BROKER_HOST, BROKER_PORT, BROKER_URL, rmq_options
from tests.integration.test_plumpy_compat import T, _delete_declared, aiida_names  # noqa: F401 - fixture

pytestmark = pytest.mark.broker


@pytest.fixture
def shared() -> dict[str, str]:
    """AiiDA-style names with production declarations (kiwipy's testing mode declares its task queue
    otherwise than ours), deleted after the test."""
    return aiida_names()


@pytest.fixture
def kiwi_mode(shared: dict[str, str]) -> Iterator[process_comms.ThreadCommunicator]:
    with process_comms.connect(BROKER_URL, api="kiwipy", **shared) as comm:
        yield comm


@pytest.fixture
def kiwi_peer(shared: dict[str, str]) -> Iterator[kiwipy.rmq.RmqThreadCommunicator]:
    """kiwipy's own thread communicator on the same names."""
    comm = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, **shared)
    yield comm
    comm.close()


# -- pending replies only for subscribers that return a future ---------------------------------------------


def test_a_plain_value_subscriber_gets_no_pending_reply(
    kiwi_mode: process_comms.ThreadCommunicator, kiwi_peer: kiwipy.rmq.RmqThreadCommunicator
) -> None:
    kiwi_mode.add_rpc_subscriber(lambda _comm, msg: f"re: {msg}", "plain")
    kiwi_mode.add_task_subscriber(lambda _comm, task: task * 2)
    # a kiwipy client (and ours in kiwipy's mode) gets the value at the first level, as from a kiwipy subscriber
    assert kiwi_peer.rpc_send("plain", "hi").result(T) == "re: hi"
    assert kiwi_mode.rpc_send("plain", "hi").result(T) == "re: hi"
    assert kiwi_peer.task_send(21).result(T) == 42
    assert kiwi_mode.task_send(4).result(T) == 8


def test_a_subscriber_that_returns_a_future_gets_one_level_per_future(
    kiwi_mode: process_comms.ThreadCommunicator, kiwi_peer: kiwipy.rmq.RmqThreadCommunicator
) -> None:
    def nested(_comm: Any, _msg: Any) -> concurrent.futures.Future[Any]:
        inner: concurrent.futures.Future[Any] = concurrent.futures.Future()
        inner.set_result("bottom")
        outer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        outer.set_result(inner)
        return outer

    kiwi_mode.add_rpc_subscriber(nested, "nested")
    for client in (kiwi_peer, kiwi_mode):
        first = client.rpc_send("nested", None).result(T)
        assert isinstance(first, concurrent.futures.Future)
        second = first.result(T)
        assert isinstance(second, concurrent.futures.Future)
        assert second.result(T) == "bottom"


def test_a_subscriber_error_fails_the_first_level(kiwi_mode: process_comms.ThreadCommunicator) -> None:
    def fails(_comm: Any, _msg: Any) -> None:
        raise RuntimeError("I cannae do it, captain!")

    kiwi_mode.add_rpc_subscriber(fails, "fails")
    kiwi_mode.add_task_subscriber(fails)
    with pytest.raises(kiwipy.RemoteException, match="cannae"):
        kiwi_mode.rpc_send("fails", None).result(T)
    with pytest.raises(kiwipy.RemoteException, match="cannae"):
        kiwi_mode.task_send(None).result(T)


def test_a_refusal_on_a_callback_thread_passes_the_task_on(kiwi_mode: process_comms.ThreadCommunicator) -> None:
    def refuses(_comm: Any, _task: Any) -> None:
        raise kiwipy.TaskRejected("not mine")

    kiwi_mode.add_task_subscriber(refuses, "refuses")
    kiwi_mode.add_task_subscriber(lambda _comm, task: task + 1, "takes")
    assert kiwi_mode.task_send(1).result(T) == 2


def test_our_mode_keeps_its_flat_results(names: dict[str, str]) -> None:
    with process_comms.connect(BROKER_URL, **rmq_options(names)) as ours:
        ours.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
        assert ours.rpc_send("echo", 7).result(T) == 7


# -- sends block until the broker confirmed them -------------------------------------------------------------


def test_rpc_send_to_no_one_raises_unroutable_from_the_call(kiwi_mode: process_comms.ThreadCommunicator) -> None:
    with pytest.raises(kiwipy.UnroutableError) as caught:
        kiwi_mode.rpc_send("no-one-here", "nothing")  # the call itself raises, as kiwipy's
    assert isinstance(caught.value, process_comms.ProcessUnreachable)


def test_task_send_returns_once_the_queue_has_the_task(
    kiwi_mode: process_comms.ThreadCommunicator, shared: dict[str, str]
) -> None:
    futures = [kiwi_mode.task_send(i) for i in range(50)]
    assert not any(fut.done() for fut in futures)
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        declared = connection.channel().queue_declare(shared["task_queue"], passive=True)
    finally:
        connection.close()
    assert declared.method.message_count == 50  # every call returned after the broker confirmed its task


def test_broadcast_send_on_a_closed_communicator_raises(names: dict[str, str]) -> None:
    comm = process_comms.connect(BROKER_URL, api="kiwipy", **rmq_options(names))
    comm.close()
    with pytest.raises(kiwipy.CommunicatorClosed):
        comm.broadcast_send("hello")
    with pytest.raises(kiwipy.CommunicatorClosed):
        comm.rpc_send("anyone", None)


# -- close() hands over what a communicator sent to its own subscribers ---------------------------------------


@pytest.mark.parametrize("backend", ["rmq", "embedded"])
@pytest.mark.parametrize("api", ["process_comms", "kiwipy"])
def test_close_lets_its_own_subscriber_answer_first(api: str, backend: str, names: dict[str, str]) -> None:
    """kiwipy's ``test_context_manager``, repeated: subscribe, send to it, close at once."""
    delivered: list[int] = []
    url, options = (BROKER_URL, rmq_options(names)) if backend == "rmq" else (None, {})
    for i in range(25):
        comm = process_comms.connect(url, api=api, **options)  # type: ignore[arg-type]
        comm.add_rpc_subscriber(lambda _comm, msg: delivered.append(msg), f"self-{i}")
        with comm:
            comm.rpc_send(f"self-{i}", i)
    assert delivered == list(range(25))


# -- kiwipy's connect keywords ----------------------------------------------------------------------------


def _json_encoder(obj: Any) -> bytes:
    return ("JSON:" + json.dumps(obj)).encode()


def _json_decoder(data: bytes) -> Any:
    text = data.decode()
    assert text.startswith("JSON:"), text
    return json.loads(text[len("JSON:") :])


def test_connect_takes_kiwipy_keywords_and_speaks_with_its_encoder(shared: dict[str, str]) -> None:
    kiwi_keywords = {
        **shared,
        "task_prefetch_size": 0,
        "task_prefetch_count": 3,
        "encoder": _json_encoder,
        "decoder": _json_decoder,
        "testing_mode": False,
        "async_task_timeout": 7,
    }
    kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, **kiwi_keywords)
    try:
        with process_comms.connect(connection_params={"url": BROKER_URL}, api="kiwipy", **kiwi_keywords) as ours:
            assert ours.send_timeout == 7  # type: ignore[attr-defined]
            ours.add_rpc_subscriber(lambda _comm, msg: {"got": msg}, "json")
            assert kiwi.rpc_send("json", [1, 2]).result(T) == {"got": [1, 2]}  # our replies: their encoding
            kiwi.add_task_subscriber(lambda _comm, task: task.upper())
            assert ours.task_send("abc").result(T) == "ABC"  # our tasks: their decoder reads them
    finally:
        kiwi.close()


@pytest.mark.parametrize(
    "params",
    [
        BROKER_URL,
        {"url": BROKER_URL},
        {"host": BROKER_HOST, "port": BROKER_PORT, "login": "guest", "password": "guest", "virtualhost": "/"},
    ],
)
def test_connection_params_forms(params: Any, names: dict[str, str]) -> None:
    with process_comms.connect(connection_params=params, **rmq_options(names)) as comm:
        comm.add_rpc_subscriber(lambda _comm, msg: msg, "echo")
        assert comm.rpc_send("echo", 3).result(T) == 3


@pytest.mark.parametrize(
    ("keywords", "error"),
    [
        ({"no_such_option": 1}, TypeError),
        ({"encoder": _json_encoder}, TypeError),
        ({"connection_params": {"url": BROKER_URL, "frame_max": 1}}, TypeError),
        ({"connection_factory": object()}, TypeError),
        ({"task_prefetch_size": 1024}, ValueError),
    ],
)
def test_connect_refuses_what_it_cannot_honour(keywords: dict[str, Any], error: type[Exception]) -> None:
    url = None if "connection_params" in keywords else BROKER_URL
    with pytest.raises(error):
        process_comms.connect(url, task_queue=f"never-{uuid.uuid4().hex[:8]}", **keywords)


def test_aiida_style_yaml_functions_carry_what_our_safe_codec_refuses(shared: dict[str, str]) -> None:
    """AiiDA passes YAML functions with an unsafe loader (``aiida/orm/utils/serialize.py``): with them, a value
    our safe codec refuses (a ``Fraction``) travels, to a kiwipy peer with the same functions too."""
    yaml_pair = {
        "encoder": functools.partial(yaml.dump, encoding="utf-8"),
        "decoder": functools.partial(yaml.load, Loader=yaml.UnsafeLoader),
    }
    with process_comms.connect(BROKER_URL, **shared) as plain:
        with pytest.raises(process_comms.EncodeError):
            plain.rpc_send("anyone", fractions.Fraction(1, 3)).result(T)
    kiwi = kiwipy.rmq.RmqThreadCommunicator.connect(connection_params={"url": BROKER_URL}, **shared, **yaml_pair)
    try:
        with process_comms.connect(BROKER_URL, api="kiwipy", **shared, **yaml_pair) as ours:
            ours.add_rpc_subscriber(lambda _comm, msg: msg * 3, "thirds")
            assert kiwi.rpc_send("thirds", fractions.Fraction(1, 3)).result(T) == 1
            assert ours.rpc_send("thirds", fractions.Fraction(2, 9)).result(T) == fractions.Fraction(2, 3)
    finally:
        kiwi.close()


def test_plumpy_kill_of_a_gone_child_raises_unroutable_from_the_call(
    kiwi_mode: process_comms.ThreadCommunicator,
) -> None:
    """AiiDA's ``Process.kill`` sends ``kill_process(child.pk)`` to each child through plumpy's thread controller
    and catches ``UnroutableError`` around the call itself (``aiida/engine/processes/process.py``)."""
    controller = plumpy.RemoteProcessThreadController(kiwi_mode)
    with pytest.raises(kiwipy.UnroutableError):
        controller.kill_process(123456789, msg_text="parent killed")
