"""The I/O layer: the communicator interface and its back ends (embedded, RabbitMQ) and the thread-facing wrapper.

Everything above (:mod:`process_comms.client`, :mod:`process_comms.worker`) talks to a communicator only
through :class:`process_comms.transports.base.AsyncCommunicator` or :class:`ThreadCommunicator`.
"""
