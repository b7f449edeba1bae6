"""The extra RabbitMQ nodes of tests/brokers.py: a spare node that can be broken, a three-node cluster.

Each test checks what a fault or fleet test relies on, against real nodes; the last ones check that the
suite's RabbitMQ on 5672 was left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pika
import pytest
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

from tests.brokers import RabbitCluster, RabbitNode, beams_under
from tests.conftest import BROKER_URL, rabbitmqctl


def _params(url: str) -> pika.URLParameters:
    """One bounded connection attempt (pika's defaults retry and wait longer)."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 5
    return params


def _answers(url: str) -> bool:
    try:
        connection = pika.BlockingConnection(_params(url))
    except AMQPConnectionError:
        return False
    try:
        return bool(connection.channel().is_open)
    finally:
        connection.close()


def test_spare_node_answers_amqp_on_its_own_port(spare_broker: RabbitNode) -> None:
    assert spare_broker.port not in (5672, 0)
    assert not spare_broker.nodename.startswith("rabbit@")
    assert _answers(spare_broker.url)


def test_spare_node_stop_app_refuses_and_start_app_restores(spare_broker: RabbitNode) -> None:
    spare_broker.stop_app()
    try:
        assert not _answers(spare_broker.url)
    finally:
        spare_broker.start_app()
    assert _answers(spare_broker.url)


def test_spare_node_has_a_cookie_of_its_own(spare_broker: RabbitNode) -> None:
    """The main node's CLI (its cookie) cannot reach the spare node: nothing aimed at one hits the other."""
    with pytest.raises(subprocess.CalledProcessError):
        rabbitmqctl("-n", spare_broker.nodename, "ping", timeout=60)
    spare_broker.ctl("ping")  # its own CLI calls carry its cookie


@pytest.mark.broker
def test_stop_kills_a_hung_node_and_leaves_nothing() -> None:
    """A node whose VM no longer answers (SIGSTOP) is killed by stop() within its bound; no VM, no files."""
    node = RabbitNode().start()
    base, proc = node.base, node.proc
    assert proc is not None and beams_under(base) == [proc.pid]
    os.kill(proc.pid, signal.SIGSTOP)
    began = time.monotonic()
    node.stop(timeout=5)
    assert time.monotonic() - began < 5 + 5 + 15 + 15  # ctl bound + wait bound + kill wait + /proc wait
    assert proc.returncode == -signal.SIGKILL
    assert beams_under(base) == []
    assert not base.exists()
    node.stop()  # idempotent


@pytest.mark.cluster
def test_cluster_has_three_running_nodes(rabbit_cluster: RabbitCluster) -> None:
    expected = sorted(node.nodename for node in rabbit_cluster.nodes)
    assert len(expected) == 3
    for node in rabbit_cluster.nodes:  # every node sees the same three
        assert sorted(rabbit_cluster.running_nodes(node)) == expected
    assert all(_answers(url) for url in rabbit_cluster.urls)


@pytest.mark.cluster
def test_quorum_queue_is_visible_from_every_node(rabbit_cluster: RabbitCluster) -> None:
    name = f"pc-test-{uuid.uuid4().hex[:12]}.quorum"
    first = pika.BlockingConnection(_params(rabbit_cluster.nodes[0].url))
    channel = first.channel()
    try:
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        for node in rabbit_cluster.nodes:
            connection = pika.BlockingConnection(_params(node.url))
            try:  # a passive declare fails with NOT_FOUND (404) on a node that does not know the queue
                connection.channel().queue_declare(name, passive=True)
            except ChannelClosedByBroker as exc:
                raise AssertionError(f"{name} not visible from {node.nodename}: {exc}")
            finally:
                connection.close()
            # and each node reports it as a quorum queue with a member on every node of the cluster
            listed = json.loads(node.ctl("list_queues", "name", "type", "members", "--formatter", "json"))
            entry = next(queue for queue in listed if queue["name"] == name)
            assert entry["type"] == "quorum"
            assert sorted(entry["members"]) == sorted(n.nodename for n in rabbit_cluster.nodes)
    finally:
        channel.queue_delete(name)
        first.close()


@pytest.mark.cluster
def test_main_node_is_still_up_and_alone(
    broker_url: str, spare_broker: RabbitNode, rabbit_cluster: RabbitCluster
) -> None:
    """After the spare node was broken and the cluster formed, the suite's node answers, clustered with nobody."""
    assert broker_url == BROKER_URL
    assert _answers(BROKER_URL)
    status = json.loads(rabbitmqctl("cluster_status", "--formatter", "json"))
    ours = {spare_broker.nodename, *(node.nodename for node in rabbit_cluster.nodes)}
    assert status["running_nodes"] and not ours & set(status["running_nodes"])
