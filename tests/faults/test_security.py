"""Security on the real broker: authentication and authorisation are the broker's, secrets never leak."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

import process_comms
from process_comms.urls import mask_url
from tests.conftest import broker_url_as, rabbitmqctl


@pytest.fixture
def user(broker_url: str) -> Iterator[tuple[str, str]]:
    """A broker user with a password but no permission on any vhost, removed afterwards."""
    name, password = f"pc-test-{uuid.uuid4().hex[:8]}", f"s3cret-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_user", name, password)
    yield name, password
    rabbitmqctl("delete_user", name)


def test_wrong_password_is_a_clear_error_without_the_password(
    user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    name, _ = user
    caplog.set_level(logging.DEBUG)
    with pytest.raises(process_comms.BrokerUnavailable) as info:
        process_comms.connect(broker_url_as(name, "not-the-password"), connect_timeout=5)
    message = str(info.value)
    assert "refused" in message or "credentials" in message, message
    assert "not-the-password" not in message
    assert "not-the-password" not in caplog.text


def test_user_without_vhost_permission_is_refused_at_connect(
    user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    name, password = user
    caplog.set_level(logging.DEBUG)
    with pytest.raises(process_comms.BrokerUnavailable) as info:
        process_comms.connect(broker_url_as(name, password), connect_timeout=5)
    assert password not in str(info.value)
    assert password not in caplog.text
    assert "***" in str(info.value)


def test_user_with_permission_connects(user: tuple[str, str]) -> None:
    name, password = user
    rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
    with process_comms.connect(broker_url_as(name, password), testing_mode=True) as comm:
        assert password not in repr(comm)
        assert password not in repr(comm.core)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:pw@host:5672/", "amqp://guest:***@host:5672/"),
        ("amqps://u:p%40ss@h/vh?heartbeat=5", "amqps://u:***@h/vh?heartbeat=5"),
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://h/db?password=pw&x=1", "postgresql://h/db?password=***&x=1"),
        ("amqp://h/", "amqp://h/"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected
