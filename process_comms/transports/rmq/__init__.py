"""The RabbitMQ back end (aio-pika): :class:`RmqCommunicator`."""

from .communicator import RmqCommunicator

__all__ = ["RmqCommunicator"]
