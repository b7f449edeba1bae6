"""Every default name and time limit in one place."""

from __future__ import annotations

#: Exchange and queue names as kiwipy 0.9 declares them.
MESSAGE_EXCHANGE = "kiwipy.messages"
TASK_EXCHANGE = "kiwipy.tasks"
TASK_QUEUE = "kiwipy.tasks"
RPC_PREFIX = "[rpc]"
BROADCAST_KEY = "[broadcast]"

#: Queue arguments as kiwipy 0.9 declares them (a different value breaks live peers: PRECONDITION_FAILED).
TASK_MESSAGE_TTL_MS = 604_800_000
REPLY_QUEUE_EXPIRES_MS = 60_000
RPC_QUEUE_MESSAGE_TTL_MS = 66_000
RPC_QUEUE_EXPIRES_MS = 60_000
BROADCAST_QUEUE_MESSAGE_TTL_MS = 66_000
TESTING_TASK_QUEUE_EXPIRES_MS = 10_000

#: Message bodies up to this size are decoded on the I/O loop; larger ones on a decoding thread.
DECODE_INLINE_BYTES = 64 * 1024

#: Seconds a controller waits for an RPC answer (status, pause, play, kill) unless told otherwise.
RPC_TIMEOUT = 30.0
#: Seconds a controller waits for a task answer (launch, continue, create) unless told otherwise.
TASK_TIMEOUT = 300.0
#: Seconds ``next_task()`` waits for the broker to hand out a queued task (kiwipy's ``TASK_FETCH_TIMEOUT``).
TASK_FETCH_TIMEOUT = 5.0
#: Seconds a blocking send of kiwipy's mode (``connect(api="kiwipy")``) waits for the broker to confirm it
#: (kiwipy's ``async_task_timeout``; AiiDA passes its ``rmq.task_timeout``, 10 s).
KIWIPY_SEND_TIMEOUT = 10.0
#: Seconds to connect to the broker before giving up with BrokerUnavailable.
CONNECT_TIMEOUT = 10.0
#: Seconds close() waits for the loop thread to finish its work.
CLOSE_TIMEOUT = 10.0
#: Seconds close() (or interpreter exit) waits for the broker to confirm what callers handed over.
CLOSE_FLUSH_TIMEOUT = 5.0
#: Longest routing key RabbitMQ accepts, in bytes.
MAX_ROUTING_KEY_BYTES = 255
#: Seconds between checks that the broker still delivers to a task consumer (it may cancel it: basic.cancel).
CONSUMER_CHECK_INTERVAL = 1.0
#: Longest back-off, in seconds, between attempts to consume a task queue again after such a cancel.
CONSUMER_RETRY_MAX = 30.0
#: Seconds after a reconnection in which an unroutable send says that the broker was recovering.
RECOVERY_WINDOW = 30.0
#: Seconds a worker's claim on a persisted process lasts unless renewed (renewed every third of it).
CLAIM_TTL = 30.0
