"""process_comms: control long-running processes remotely over a message broker.

Launch a process by class name, continue it from a checkpoint, pause, play, kill and ask its status:
one process by pid or all at once. A thread-friendly blocking facade over one asyncio core; the same
messages as plumpy + kiwipy on RabbitMQ, or an embedded in-process communicator with no broker.
"""

from .client.controller import TERMINAL_STATES, RemoteProcessController
from .client.futures import as_asyncio, wait_all
from .client.thread_controller import RemoteProcessThreadController
from .errors import (
    AccessRefused,
    BrokerUnavailable,
    CommunicatorClosed,
    ConnectionLost,
    DeadlockError,
    DecodeError,
    DuplicatePid,
    DuplicateSubscriber,
    EncodeError,
    InvalidLaunchOption,
    InvalidPid,
    LoadError,
    PersistenceError,
    ProcessCommsError,
    ProcessKilled,
    ProcessLost,
    ProcessUnreachable,
    QueueEmpty,
    RemoteError,
    StoreUnavailable,
    TaskRejected,
    TimeoutError,
)
from .transports.base import AsyncCommunicator, BroadcastFilter
from .transports.connect import connect, connect_async
from .transports.embedded import EmbeddedCommunicator
from .transports.kiwipy_async import KiwipyAsyncCommunicator, connect_kiwipy_async
from .transports.loop import ControllerFuture
from .transports.rmq import RmqCommunicator
from .transports.threaded import ThreadCommunicator
from .wire.codec import Codec, JsonCodec, YamlCodec, get_codec
from .wire.messages import (
    ARGS_KEY,
    CONTINUE_TASK,
    CREATE_TASK,
    FORCE_KILL_KEY,
    INTENT_KEY,
    KWARGS_KEY,
    LAUNCH_TASK,
    MESSAGE_TEXT_KEY,
    NOWAIT_KEY,
    PERSIST_KEY,
    PID_KEY,
    PID_TYPE,
    PROCESS_CLASS_KEY,
    TAG_KEY,
    TASK_ARGS,
    TASK_KEY,
    AllowListLoader,
    DefaultObjectLoader,
    Intent,
    MessageBuilder,
    ObjectLoader,
    Pid,
    create_continue_body,
    create_create_body,
    create_launch_body,
    get_object_loader,
    set_object_loader,
)
from .wire.types import ProcessPage, ProcessRecord, ProcessStatus, ProcessSummary, WorkerInfo
from .worker.launcher import ProcessLauncher
from .worker.persistence import InMemoryPersister, Persister, SqlPersister, get_persister, open_record_store
from .worker.process import KilledError, Process, ProcessState
from .worker.worker import Worker

__version__ = "0.1.0"

__all__ = [
    # plumpy.process_comms' key constants, under the same names
    "ARGS_KEY",
    "CONTINUE_TASK",
    "CREATE_TASK",
    "FORCE_KILL_KEY",
    "INTENT_KEY",
    "KWARGS_KEY",
    "LAUNCH_TASK",
    "MESSAGE_TEXT_KEY",
    "NOWAIT_KEY",
    "PERSIST_KEY",
    "PID_KEY",
    "PID_TYPE",
    "PROCESS_CLASS_KEY",
    "TAG_KEY",
    "TASK_ARGS",
    "TASK_KEY",
    "Pid",
    "AllowListLoader",
    "AsyncCommunicator",
    "BroadcastFilter",
    "AccessRefused",
    "BrokerUnavailable",
    "Codec",
    "CommunicatorClosed",
    "ConnectionLost",
    "ControllerFuture",
    "DeadlockError",
    "DecodeError",
    "DefaultObjectLoader",
    "DuplicatePid",
    "DuplicateSubscriber",
    "QueueEmpty",
    "EmbeddedCommunicator",
    "EncodeError",
    "InMemoryPersister",
    "Intent",
    "InvalidLaunchOption",
    "InvalidPid",
    "JsonCodec",
    "KilledError",
    "KiwipyAsyncCommunicator",
    "LoadError",
    "MessageBuilder",
    "ObjectLoader",
    "PersistenceError",
    "Persister",
    "Process",
    "ProcessCommsError",
    "ProcessKilled",
    "ProcessLauncher",
    "ProcessLost",
    "ProcessState",
    "ProcessStatus",
    "ProcessRecord",
    "ProcessSummary",
    "ProcessPage",
    "WorkerInfo",
    "ProcessUnreachable",
    "RemoteError",
    "RemoteProcessController",
    "RemoteProcessThreadController",
    "RmqCommunicator",
    "SqlPersister",
    "StoreUnavailable",
    "TERMINAL_STATES",
    "TaskRejected",
    "ThreadCommunicator",
    "TimeoutError",
    "Worker",
    "YamlCodec",
    "as_asyncio",
    "connect",
    "connect_async",
    "connect_kiwipy_async",
    "create_continue_body",
    "create_create_body",
    "create_launch_body",
    "get_codec",
    "get_persister",
    "get_object_loader",
    "open_record_store",
    "set_object_loader",
    "wait_all",
]
