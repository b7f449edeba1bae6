"""process_comms: control long-running processes remotely over a message broker.

Launch a process by class name, continue it from a checkpoint, pause, play, kill and ask its status:
one process by pid or all at once. A thread-friendly blocking facade over one asyncio core; the same
messages as plumpy + kiwipy on RabbitMQ, or an embedded in-process communicator with no broker.
"""

from .codec import Codec, JsonCodec, YamlCodec, get_codec
from .communicator import AsyncCommunicator, BroadcastFilter
from .controller import TERMINAL_STATES, RemoteProcessController
from .embedded import EmbeddedCommunicator
from .errors import (
    BrokerUnavailable,
    CommunicatorClosed,
    ConnectionLost,
    DeadlockError,
    DecodeError,
    DuplicateSubscriber,
    EncodeError,
    InvalidPid,
    LoadError,
    PersistenceError,
    ProcessCommsError,
    ProcessKilled,
    ProcessUnreachable,
    RemoteError,
    TaskRejected,
    TimeoutError,
)
from .futures import ControllerFuture, as_asyncio, wait_all
from .launcher import ProcessLauncher
from .loaders import AllowListLoader, DefaultObjectLoader, ObjectLoader, get_object_loader, set_object_loader
from .messages import (
    Intent,
    MessageBuilder,
    create_continue_body,
    create_create_body,
    create_launch_body,
)
from .persistence import InMemoryPersister, Persister, SqlPersister, get_persister
from .process import KilledError, Process, ProcessState
from .rmq import RmqCommunicator
from .thread_controller import RemoteProcessThreadController
from .threadcomms import ThreadCommunicator, connect, connect_async
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AllowListLoader",
    "AsyncCommunicator",
    "BroadcastFilter",
    "BrokerUnavailable",
    "Codec",
    "CommunicatorClosed",
    "ConnectionLost",
    "ControllerFuture",
    "DeadlockError",
    "DecodeError",
    "DefaultObjectLoader",
    "DuplicateSubscriber",
    "EmbeddedCommunicator",
    "EncodeError",
    "InMemoryPersister",
    "Intent",
    "InvalidPid",
    "JsonCodec",
    "KilledError",
    "LoadError",
    "MessageBuilder",
    "ObjectLoader",
    "PersistenceError",
    "Persister",
    "Process",
    "ProcessCommsError",
    "ProcessKilled",
    "ProcessLauncher",
    "ProcessState",
    "ProcessUnreachable",
    "RemoteError",
    "RemoteProcessController",
    "RemoteProcessThreadController",
    "RmqCommunicator",
    "SqlPersister",
    "TERMINAL_STATES",
    "TaskRejected",
    "ThreadCommunicator",
    "TimeoutError",
    "Worker",
    "YamlCodec",
    "as_asyncio",
    "connect",
    "connect_async",
    "create_continue_body",
    "create_create_body",
    "create_launch_body",
    "get_codec",
    "get_persister",
    "get_object_loader",
    "set_object_loader",
    "wait_all",
]
