"""The ``process_comms.rabbitmq`` broker: aiida-core's RabbitMQ broker interface, on process_comms.

aiida-core 2.x builds plumpy's controllers itself over the communicator a broker gives
(``Manager.get_process_controller`` and ``Runner.__init__`` in aiida-core's ``src/aiida/manage/manager.py`` and
``src/aiida/engine/runners.py``), and its code relies on kiwipy's send semantics (``Process.kill`` catches
``UnroutableError`` from the call, ``revive_processes`` unwraps one future level). So the communicator is ours in
kiwipy's mode (``connect(url, api="kiwipy")``) with AiiDA's own exchange and queue names, serializer and settings,
and :meth:`ProcessCommsBroker.get_process_controller` gives our controller in the plumpy-shaped mode for code
that asks the broker. A profile of ``core.rabbitmq`` and one of this broker share the same names on the broker,
so their daemons and clients interoperate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Protocol

from aiida.brokers.broker import Broker, BrokerServiceStatus
from aiida.brokers.rabbitmq.broker import RabbitmqBroker
from aiida.brokers.rabbitmq.utils import (
    get_launch_queue_name,
    get_message_exchange_name,
    get_rmq_url,
    get_task_exchange_name,
)

from ..client.thread_controller import RemoteProcessThreadController
from ..errors import ProcessCommsError
from ..transports.connect import connect
from ..transports.threaded import ThreadCommunicator
from ..urls import mask_url

__all__ = ["AIIDA_REPLY_TIMEOUT", "ProcessCommsBroker"]

#: Seconds the communicator waits for a reply before failing it. kiwipy, which AiiDA was written against, has no
#: reply deadline, and AiiDA passes none (a parent's kill waits for its children's, a CalcJob's kill waits for
#: the scheduler): a day is "never" for AiiDA and still bounds what a lost reply holds.
AIIDA_REPLY_TIMEOUT = 86400.0


class AiidaProfile(Protocol):
    """What the broker reads of an aiida-core ``Profile``: its uuid (AiiDA's names on the broker)."""

    @property
    def uuid(self) -> str: ...


class ProcessCommsBroker(Broker):
    """aiida-core's broker interface on process_comms: RabbitMQ with AiiDA's names, configured as ``core.rabbitmq``."""

    # the same settings as core.rabbitmq (``verdi profile configure-broker``, the profile's process_control.config)
    # aiida-core's Broker interface names its settings so (RUF100: SLF001 is not in the default selection)
    _config_fields = RabbitmqBroker._config_fields  # noqa: SLF001, RUF100

    def __init__(self, profile: AiidaProfile) -> None:
        super().__init__(profile)
        self._prefix = f"aiida-{profile.uuid}"
        self._communicator: ThreadCommunicator | None = None
        self._controller: RemoteProcessThreadController | None = None

    @classmethod
    def get_detected_config(cls, get_value: Callable[..., object]) -> dict[str, object]:
        """The RabbitMQ settings ``verdi`` proposes, as for ``core.rabbitmq``."""
        detected: dict[str, object] = RabbitmqBroker.get_detected_config(get_value)
        return detected

    def __str__(self) -> str:
        url = mask_url(self.get_url())
        try:
            return f"process_comms on RabbitMQ v{self.get_communicator().server_properties['version']} @ {url}"
        except (ProcessCommsError, ConnectionError, KeyError):
            return f"process_comms on RabbitMQ @ {url} <Connection failed>"

    def get_url(self) -> str:
        """The AMQP URL of the profile's broker settings (``broker_*`` keys, as ``core.rabbitmq`` reads them)."""
        settings = {
            key[len("broker_") :]: value
            for key, value in self._profile.process_control_config.items()
            if key.startswith("broker_")
        }
        parameters = settings.pop("parameters", {})
        url: str = get_rmq_url(**settings, **parameters)
        return url

    def get_communicator(self) -> ThreadCommunicator:
        """The profile's communicator: ours in kiwipy's mode, on AiiDA's exchanges and task queue; made once."""
        if self._communicator is None:
            from aiida.manage.configuration import get_config_option
            from aiida.orm.utils import serialize

            # AiiDA's serializer, as core.rabbitmq gives kiwipy: task results carry nodes (``!aiida_node``) that
            # only AiiDA's loader reads, on AiiDA's own trusted broker (wire/codec.py FunctionCodec bounds sizes)
            self._communicator = connect(
                self.get_url(),
                api="kiwipy",
                encoder=functools.partial(serialize.serialize, encoding="utf-8"),
                decoder=serialize.deserialize_unsafe,
                async_task_timeout=get_config_option("broker.task_timeout"),
                message_exchange=get_message_exchange_name(self._prefix),
                task_exchange=get_task_exchange_name(self._prefix),
                task_queue=get_launch_queue_name(self._prefix),
                task_prefetch_count=get_config_option("daemon.worker_process_slots"),
                testing_mode=self._profile.is_test_profile,
                rpc_timeout=AIIDA_REPLY_TIMEOUT,
                task_timeout=AIIDA_REPLY_TIMEOUT,
            )
        return self._communicator

    def get_process_controller(self) -> RemoteProcessThreadController:
        """Our controller in the plumpy-shaped mode over :meth:`get_communicator` (what AiiDA's code expects)."""
        if self._controller is None:
            self._controller = RemoteProcessThreadController(self.get_communicator(), api="plumpy")
        return self._controller

    def iterate_tasks(self) -> Iterator[object]:
        """The tasks waiting in the profile's task queue (``verdi process repair``), as kiwipy iterates them."""
        queue = self.get_communicator().task_queue(get_launch_queue_name(self._prefix))
        yield from queue

    def check_service_reachable(self) -> bool:
        """Whether RabbitMQ answers with the profile's settings."""
        had = self._communicator is not None
        try:
            self.get_communicator()
        except (ProcessCommsError, ConnectionError):
            return False
        finally:
            if not had:
                self.close()
        return True

    def probe_service_status(self) -> BrokerServiceStatus:
        """``{"connected": True, ...server properties}``, or ``{"connected": False, "error": ...}``."""
        had = self._communicator is not None
        try:
            properties = self.get_communicator().server_properties
            status: dict[str, object] = {"connected": True, "client": "process_comms"}
            for key, value in properties.items():
                status[key] = value.decode("utf-8") if isinstance(value, bytes) else value
            return status
        except (ProcessCommsError, ConnectionError) as exc:
            return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if not had:
                self.close()

    def close(self) -> None:
        """Close the communicator (what was handed over is published first); idempotent."""
        communicator, self._communicator, self._controller = self._communicator, None, None
        if communicator is not None:
            communicator.close()
