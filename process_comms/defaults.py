"""Every default name and time limit in one place."""

from __future__ import annotations

#: Exchange and queue names as kiwipy 0.9 declares them.
MESSAGE_EXCHANGE = "kiwipy.messages"
TASK_EXCHANGE = "kiwipy.tasks"
RPC_PREFIX = "[rpc]"
BROADCAST_KEY = "[broadcast]"

#: Queue arguments as kiwipy 0.9 declares them (a different value breaks live peers: PRECONDITION_FAILED).
TASK_MESSAGE_TTL_MS = 604_800_000
REPLY_QUEUE_EXPIRES_MS = 60_000
RPC_QUEUE_MESSAGE_TTL_MS = 66_000
RPC_QUEUE_EXPIRES_MS = 60_000
BROADCAST_QUEUE_MESSAGE_TTL_MS = 66_000
TESTING_TASK_QUEUE_EXPIRES_MS = 10_000

#: Largest message body, encoded, that a codec writes or reads: the one size limit of the wire. Whatever the
#: codec encodes under it, it decodes; over it, encoding raises EncodeError (nothing is sent) and a received
#: body raises DecodeError. 8 MiB is 300,000 ints three times over (2.6 MB) and decodes in ~0.1 s; RabbitMQ
#: itself accepts up to 128 MiB (max_message_size). docs/security.md, "Message limits".
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: Deepest nesting of lists, tuples and dicts in a message (the top-level container is level 1): deeper
#: values raise EncodeError when encoded.
MAX_NESTING_DEPTH = 100
#: Largest body in block YAML (what kiwipy peers write) that is decoded: PyYAML spends ~1 s and ~40 MB per
#: MiB on it (tests/wire/test_decode_cost.py). Our own encoder writes block YAML only for bytes, sets and dates,
#: and refuses it over this size, so that what it writes is always decoded.
MAX_BLOCK_YAML_BYTES = 1024 * 1024

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
#: Seconds before the second attempt to consume a task queue again after losing its consumer (the first is at
#: once); each failed attempt doubles the wait, up to CONSUMER_RETRY_MAX (rmq/_tasks.py ``_watch_consumer``).
CONSUMER_RETRY_FIRST = 1.0
#: Longest wait, in seconds, between those attempts: also the longest a worker may idle once the queue is back
#: (a restarted node's classic queue). One attempt is one channel and one queue.declare.
CONSUMER_RETRY_MAX = 10.0
#: Seconds after a reconnection in which an unroutable send says that the broker was recovering.
RECOVERY_WINDOW = 30.0
#: Seconds a worker's claim on a persisted process lasts unless renewed (renewed every third of it).
CLAIM_TTL = 30.0
