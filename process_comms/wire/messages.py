"""The wire format and how it is read: what a message is, byte for byte as plumpy 0.26 and kiwipy 0.9 build it,
and what we add where their peers never read it. No I/O; :mod:`process_comms.transports` carries it.

Its parts, each under a section comment of its own, in this order:

- the keys and intents of plumpy's messages, RPC message bodies (:class:`MessageBuilder`);
- object loaders: class identifiers ``"module:Name"`` to objects and back, as plumpy's loaders do
  (:class:`ObjectLoader`, :class:`DefaultObjectLoader`, :class:`AllowListLoader`);
- task bodies (launch, continue, create), which name their process class by a loader's identifier;
- our launch options (a label, a time limit), where plumpy peers never see them;
- the records route (docs/fleet.md) and a pid typed by a person;
- the task envelope and the reply (kiwipy's shapes): reply keys, error replies, how a reply is read;
- our extensions in AMQP headers (no ``pending`` reply; a broadcast's subject and sender);
- a process's status, whoever answers it (:func:`status_of_record`: the process or its record).

``loaders``, ``extensions`` and ``status`` keep their old import paths (shims in this package).
"""

from __future__ import annotations

import abc
import importlib
import math
import time
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, Dict, Final, NamedTuple, Optional, Protocol, cast, runtime_checkable

from ..errors import (
    DecodeError,
    DuplicatePid,
    InvalidLaunchOption,
    InvalidTask,
    LoadError,
    ProcessCommsError,
    ProcessKilled,
    RemoteError,
    TaskRejected,
)
from .types import TERMINAL_STATES, UNENDED_STATES, Pid, ProcessStatus, is_terminal

__all__ = [
    "parse_pid",
    "Pid",
    "PID_TYPE",
    "Intent",
    "MessageBuilder",
    "MessageType",
    "create_launch_body",
    "create_continue_body",
    "create_create_body",
    "LABEL_MAX_CHARS",
    "LAUNCH_OPTIONS_KEY",
    "TIME_LIMIT_MAX",
    "LaunchOptions",
    "check_label",
    "check_time_limit",
    "launch_options_of",
    "time_limit_reason",
    "with_launch_options",
    "INTENT_KEY",
    "MESSAGE_TEXT_KEY",
    "FORCE_KILL_KEY",
    "RELEASE_KEY",
    "TASK_KEY",
    "TASK_ARGS",
    "PERSIST_KEY",
    "PROCESS_CLASS_KEY",
    "ARGS_KEY",
    "KWARGS_KEY",
    "NOWAIT_KEY",
    "PID_KEY",
    "TAG_KEY",
    "LAUNCH_TASK",
    "CONTINUE_TASK",
    "CREATE_TASK",
    "TASK_TYPES",
    "ANSWER_PREFIX",
    "STATE_CHANGED_PREFIX",
    "TERMINAL_STATES",
    "is_terminal",
    "state_name",
    "state_from_subject",
    "state_transition",
    "wire_bool",
    "wire_text",
    "RECORDS_INTENT",
    "RECORDS_ROUTE_PREFIX",
    "RECORD_OP_KEY",
    "RECORD_OP_GET",
    "RECORD_OP_LIST",
    "RECORD_OP_KILL",
    "KILL_REQUESTED",
    "RECORD_TASK_ID_KEY",
    "is_kill_request",
    "records_route",
    "records_request",
    # object loaders
    "ObjectLoader",
    "DefaultObjectLoader",
    "AllowListLoader",
    "get_object_loader",
    "set_object_loader",
    # the task envelope and the reply
    "RESULT_KEY",
    "EXCEPTION_KEY",
    "CANCELLED_KEY",
    "PENDING_KEY",
    "HOST_KEY",
    "ERROR_TYPE_KEY",
    "TRACEBACK_KEY",
    "MAX_TRACEBACK_CHARS",
    "bounded_traceback",
    "KILLED_TYPES",
    "REJECTED_TYPES",
    "exception_reply",
    "reply_outcome",
    "parse_task_envelope",
    # our extensions in AMQP headers
    "NO_PENDING",
    "SENDER",
    "SENDER_TYPE",
    "SUBJECT",
    "broadcast_headers",
    "broadcast_unwanted",
    "task_headers",
    "wants_pending",
    # a process's status, whoever answers it
    "LOST_TYPE",
    "is_lost",
    "lost_record",
    "status_of_record",
    "STATUS_RECORD_KEYS",
    "UNENDED_STATES",
]

# --- the keys and intents of plumpy's messages, and RPC message bodies ---

#: plumpy's ``PID_TYPE`` (``typing.Hashable``), kept for code that reads it; :data:`Pid` says what we carry.
PID_TYPE = Hashable

INTENT_KEY = "intent"
MESSAGE_TEXT_KEY = "message"
FORCE_KILL_KEY = "force_kill"
#: Extra key of a pause (ignored by plumpy): checkpoint the paused process and stop running it.
RELEASE_KEY = "release"

TASK_KEY = "task"
TASK_ARGS = "args"
PERSIST_KEY = "persist"
PROCESS_CLASS_KEY = "process_class"
ARGS_KEY = "init_args"
KWARGS_KEY = "init_kwargs"
NOWAIT_KEY = "nowait"
PID_KEY = "pid"
TAG_KEY = "tag"
LAUNCH_TASK = "launch"
CONTINUE_TASK = "continue"
CREATE_TASK = "create"
TASK_TYPES = (LAUNCH_TASK, CONTINUE_TASK, CREATE_TASK)

#: A message body: a dict of wire values (what the codecs carry).
MessageType = Dict[str, object]

#: Subject prefix of a process's answer to a broadcast intent that carried a correlation id.
ANSWER_PREFIX: Final = "intent_result."
#: Subject prefix of the broadcast a process sends on each transition: ``state_changed.<from>.<to>``.
STATE_CHANGED_PREFIX: Final = "state_changed."


def state_name(state: object) -> str:
    """The short name of a status dict's ``state``: ``ProcessState.RUNNING`` -> ``running``; None -> ``""``."""
    return "" if state is None else str(state).rsplit(".", 1)[-1].lower()


def state_transition(subject: object) -> tuple[str, str] | None:
    """``(from, to)`` of a ``state_changed.<from>.<to>`` subject (plumpy sends ``None`` as the first
    ``from``), or None for any other subject."""
    if not isinstance(subject, str) or not subject.startswith(STATE_CHANGED_PREFIX):
        return None
    parts = subject[len(STATE_CHANGED_PREFIX) :].split(".")
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0] and parts[1] else None


def state_from_subject(subject: object) -> str | None:
    """The new state named by a ``state_changed.<from>.<to>`` subject, or None for any other subject."""
    transition = state_transition(subject)
    return None if transition is None else transition[1]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def wire_bool(body: Mapping[str, object], key: str, default: bool) -> bool:
    """``body[key]`` as a wire boolean: ``default`` when missing or null, else it must be a bool.

    Flags are never read by truthiness (``'false'`` would mean true): anything else raises
    :class:`InvalidTask` naming the key and the type.
    """
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise InvalidTask(f"{key!r} must be true, false or null, not {type(value).__name__} {_shown(value)}")


def wire_text(value: object, what: str = "message text", error: type[ProcessCommsError] = InvalidTask) -> Optional[str]:
    """A message text as plumpy documents it (a str or None); anything else (a float, a date, bytes, a
    tuple) raises ``error``: it would become the process's status and fail its next checkpoint."""
    if value is None or isinstance(value, str):
        return value
    raise error(f"the {what} must be a string or None, not {type(value).__name__} {_shown(value)}")


class Intent:
    """The intents a process understands over RPC (and, for play/pause/kill, as broadcast subjects)."""

    PLAY: str = "play"
    PAUSE: str = "pause"
    KILL: str = "kill"
    STATUS: str = "status"

    ALL = (PLAY, PAUSE, KILL, STATUS)


class MessageBuilder:
    """Builds the RPC message bodies sent to a process."""

    @classmethod
    def play(cls, text: Optional[str] = None) -> MessageType:
        """Resume a paused process."""
        return {INTENT_KEY: Intent.PLAY, MESSAGE_TEXT_KEY: text}

    @classmethod
    def pause(cls, text: Optional[str] = None) -> MessageType:
        """Pause a process at its next await point; ``text`` becomes its status while paused."""
        return {INTENT_KEY: Intent.PAUSE, MESSAGE_TEXT_KEY: text}

    @classmethod
    def kill(cls, text: Optional[str] = None, force_kill: bool = False) -> MessageType:
        """Kill a process; ``force_kill`` terminates it without waiting for the current step."""
        return {INTENT_KEY: Intent.KILL, MESSAGE_TEXT_KEY: text, FORCE_KILL_KEY: force_kill}

    @classmethod
    def status(cls, text: Optional[str] = None) -> MessageType:
        """Ask a process for its status dict."""
        return {INTENT_KEY: Intent.STATUS, MESSAGE_TEXT_KEY: text}


# --- object loaders: class identifiers ("module:Name") to objects and back, as plumpy's loaders do ---


class ObjectLoader(abc.ABC):
    """Identifies an object by a string and loads it back from that string."""

    @abc.abstractmethod
    def load_object(self, identifier: str) -> Any:
        """Load the object named by ``identifier``; raise :class:`LoadError` (a ``ValueError``-free ImportError)."""

    @abc.abstractmethod
    def identify_object(self, obj: object) -> str:
        """Return the identifier of ``obj``."""


def _split(identifier: object) -> tuple[str, str]:
    if not isinstance(identifier, str):
        raise LoadError(f"class identifier must be a string 'module:Name', not {type(identifier).__name__}")
    mod_name, sep, name = identifier.partition(":")
    if not sep or not mod_name or not name or ":" in name:
        raise LoadError(f"identifier {identifier!r} has an invalid format: expected 'module:Name'")
    return mod_name, name


#: When a loader of this Python process first had each module (epoch seconds): a class added to the module's
#: file later is not in the module a long-running worker holds, and its error says so.
_FIRST_LOADED: dict[str, float] = {}


def _import(mod_name: str) -> ModuleType:
    module = importlib.import_module(mod_name)
    _FIRST_LOADED.setdefault(mod_name, time.time())
    return module


def _missing(mod_name: str, name: str, part: str, identifier: str) -> LoadError:
    """The error for an attribute ``part`` that the loaded module does not have, with the likely reason."""
    where = f"object {name!r} from identifier {identifier!r} could not be loaded: module {mod_name!r} has no attribute"
    loaded = _FIRST_LOADED.get(mod_name)
    if loaded is None or part != name.split(".")[0]:
        return LoadError(f"{where} {part!r}")
    stamp = time.strftime("%H:%M:%S", time.localtime(loaded))
    return LoadError(
        f"{where} {part!r}: this process imported {mod_name!r} at {stamp} (or before) and keeps that version; "
        "if the class was added since, restart it to load new classes"
    )


class _Qualified(Protocol):
    __module__: str
    __qualname__: str


class DefaultObjectLoader(ObjectLoader):
    """Imports ``module`` and returns its attribute ``Name`` (dotted names walk attributes)."""

    def load_object(self, identifier: str) -> Any:
        mod_name, name = _split(identifier)
        try:
            module = _import(mod_name)
        except ImportError as exc:
            raise LoadError(f"module {mod_name!r} from identifier {identifier!r} could not be loaded: {exc}") from None
        obj: object = module
        for part in name.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise _missing(mod_name, name, part, identifier) from None
        return obj

    def identify_object(self, obj: object) -> str:
        if isinstance(obj, str):  # a name is sent as is: the client need not (and should not) import it
            _split(obj)
            return obj
        named = cast(_Qualified, obj)  # a class or a function; anything else fails here with AttributeError
        identifier = f"{named.__module__}:{named.__qualname__}"
        self.load_object(identifier)
        return identifier


class AllowListLoader(DefaultObjectLoader):
    """Loads only from allowed modules (a module allows its submodules), and never imports others."""

    def __init__(self, allowed_modules: Iterable[str]) -> None:
        self.allowed_modules = tuple(allowed_modules)

    def is_allowed(self, identifier: str) -> bool:
        mod_name, _ = _split(identifier)
        return any(mod_name == m or mod_name.startswith(m + ".") for m in self.allowed_modules)

    def check_modules(self) -> None:
        """Import every allowed module now; a :class:`LoadError` names the first that cannot be imported, and why.

        A worker calls it before it takes tasks: a typo in a module name would otherwise reject every task.
        """
        for mod_name in self.allowed_modules:
            try:
                _import(mod_name)
            except ModuleNotFoundError as exc:
                if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
                    raise LoadError(f"no module named {exc.name!r} (a typo, or not on sys.path?)") from None
                raise LoadError(f"module {mod_name!r} fails to import: {type(exc).__name__}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - any error of the module's own code is the reason to say
                raise LoadError(f"module {mod_name!r} fails to import: {type(exc).__name__}: {exc}") from None

    def load_object(self, identifier: str) -> Any:
        if not self.is_allowed(identifier):
            raise LoadError(
                f"{identifier!r} is not allowed on this worker: allowed modules are {list(self.allowed_modules)}"
            )
        return super().load_object(identifier)


_OBJECT_LOADER: ObjectLoader | None = None


def get_object_loader() -> ObjectLoader:
    """Return the process-wide default loader (a :class:`DefaultObjectLoader` unless one was set)."""
    global _OBJECT_LOADER
    if _OBJECT_LOADER is None:
        _OBJECT_LOADER = DefaultObjectLoader()
    return _OBJECT_LOADER


def set_object_loader(loader: ObjectLoader | None) -> None:
    """Replace the process-wide default loader (``None`` restores the default)."""
    global _OBJECT_LOADER
    _OBJECT_LOADER = loader


# --- task bodies: launch, continue, create (a process class travels as its loader's identifier) ---


def _identify(process_class: object, loader: Optional[ObjectLoader]) -> str:
    return (loader or get_object_loader()).identify_object(process_class)


def create_launch_body(
    process_class: object,
    init_args: Optional[Sequence[object]] = None,
    init_kwargs: Optional[Mapping[str, object]] = None,
    persist: bool = False,
    loader: Optional[ObjectLoader] = None,
    nowait: bool = True,
) -> MessageType:
    """Body of a ``launch`` task: instantiate ``process_class`` on a worker and run it."""
    return {
        TASK_KEY: LAUNCH_TASK,
        TASK_ARGS: {
            PROCESS_CLASS_KEY: _identify(process_class, loader),
            PERSIST_KEY: persist,
            NOWAIT_KEY: nowait,
            ARGS_KEY: init_args,
            KWARGS_KEY: init_kwargs,
        },
    }


def create_continue_body(pid: Pid, tag: Optional[str] = None, nowait: bool = False) -> MessageType:
    """Body of a ``continue`` task: load ``pid``'s checkpoint on a worker and run it to the end."""
    return {TASK_KEY: CONTINUE_TASK, TASK_ARGS: {PID_KEY: pid, NOWAIT_KEY: nowait, TAG_KEY: tag}}


def create_create_body(
    process_class: object,
    init_args: Optional[Sequence[object]] = None,
    init_kwargs: Optional[Mapping[str, object]] = None,
    persist: bool = False,
    loader: Optional[ObjectLoader] = None,
) -> MessageType:
    """Body of a ``create`` task: instantiate (and optionally checkpoint) a process without running it."""
    return {
        TASK_KEY: CREATE_TASK,
        TASK_ARGS: {
            PROCESS_CLASS_KEY: _identify(process_class, loader),
            PERSIST_KEY: persist,
            ARGS_KEY: init_args,
            KWARGS_KEY: init_kwargs,
        },
    }


# --- our launch options (a label, a time limit): where they travel so that plumpy peers never see them ---
# plumpy 0.26's ``ProcessLauncher.__call__`` reads only ``task["task"]`` and ``task["args"]`` and passes the
# args as keyword arguments to ``_launch``/``_create`` (``src/plumpy/process_comms.py``): an unknown key in
# ``args`` would be a ``TypeError`` there, and one in ``init_kwargs`` would reach the process class. So the
# options travel beside them, in a top-level key of the task body (:data:`LAUNCH_OPTIONS_KEY`) that plumpy's
# launcher never reads, and only when an option is given: a launch without options is byte for byte
# plumpy's (``tests/integration/test_launch_options_plumpy.py`` launches one with options on a plumpy worker).
#: The top-level key of a launch or create task body that holds our options (plumpy's launcher ignores it).
LAUNCH_OPTIONS_KEY: Final = "process_comms_options"
#: Longest label, in characters: a label is a name to find a process by, shown in every listing row.
LABEL_MAX_CHARS: Final = 200
#: Longest time limit, in seconds (a year): beyond it a typo, not a limit.
TIME_LIMIT_MAX: Final = 365 * 24 * 3600.0


class LaunchOptions(NamedTuple):
    """The options of one launch: its label and its time limit in seconds (each None when not given)."""

    label: str | None = None
    time_limit: float | None = None


def check_label(label: object) -> str | None:
    """``label`` if it is None or a string of at most :data:`LABEL_MAX_CHARS` characters; else
    :class:`InvalidLaunchOption`."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidLaunchOption(f"a label must be a string, not {type(label).__name__}")
    if len(label) > LABEL_MAX_CHARS:
        raise InvalidLaunchOption(f"a label has at most {LABEL_MAX_CHARS} characters, this one has {len(label)}")
    return label


def check_time_limit(seconds: object) -> float | None:
    """``seconds`` as a float if it is None or a number above 0 and at most :data:`TIME_LIMIT_MAX`; else
    :class:`InvalidLaunchOption`."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidLaunchOption(f"a time limit must be a number of seconds, not {type(seconds).__name__}")
    value = float(seconds)
    if not math.isfinite(value) or value <= 0 or value > TIME_LIMIT_MAX:
        raise InvalidLaunchOption(f"a time limit must be above 0 and at most {TIME_LIMIT_MAX:g} s, not {seconds!r}")
    return value


def with_launch_options(body: dict[str, object], label: object = None, time_limit: object = None) -> dict[str, object]:
    """``body`` (a launch or create task) with our options checked and added; unchanged when none is given."""
    options = {"label": check_label(label), "time_limit": check_time_limit(time_limit)}
    given = {key: value for key, value in options.items() if value is not None}
    return {**body, LAUNCH_OPTIONS_KEY: given} if given else body


def launch_options_of(task: Mapping[str, object]) -> LaunchOptions:
    """The options a task body carries (none: a plumpy client's task); :class:`InvalidLaunchOption` if they
    are out of bounds or not a mapping."""
    options = task.get(LAUNCH_OPTIONS_KEY)
    if options is None:
        return LaunchOptions()
    if not isinstance(options, Mapping):
        raise InvalidLaunchOption(f"{LAUNCH_OPTIONS_KEY!r} must be a mapping, not {type(options).__name__}")
    return LaunchOptions(check_label(options.get("label")), check_time_limit(options.get("time_limit")))


def time_limit_reason(time_limit: float) -> str:
    """What a process killed by its time limit says: ``time limit of 30 s reached``."""
    return f"time limit of {time_limit:g} s reached"


# --- process records (docs/fleet.md): a route every worker of one installation subscribes ---
#: Intent of a request to the records route (not a process intent: plumpy peers never see it).
RECORDS_INTENT: Final = "records"
#: The records route is ``__records__.<task queue name>``: the workers of one installation share it.
RECORDS_ROUTE_PREFIX: Final = "__records__"
RECORD_OP_KEY: Final = "op"
RECORD_OP_GET: Final = "get"
RECORD_OP_LIST: Final = "list"
RECORD_OP_KILL: Final = "kill"
#: The ``state_name`` of a kill request for a pid no worker has run (a tombstone, not a process): the worker
#: that takes a task of that pid later drops it; lists leave it out, and it expires (worker/records_service.py).
KILL_REQUESTED: Final = "kill_requested"
#: Record key naming the task (its correlation id) that launched the process: the same task delivered
#: again is told from a new launch of the pid by it (worker/_pids.py).
RECORD_TASK_ID_KEY: Final = "task_id"


def is_kill_request(record: object) -> bool:
    """True if ``record`` (a record or a summary) is a kill request for an unknown pid, not a process."""
    return isinstance(record, dict) and record.get("state_name") == KILL_REQUESTED


def records_route(task_queue: str) -> str:
    """The RPC identifier that every worker consuming ``task_queue`` answers record queries on."""
    return f"{RECORDS_ROUTE_PREFIX}.{task_queue}"


def records_request(op: str, **fields: object) -> MessageType:
    """A request to the records route: ``{"intent": "records", "op": op, ...fields}``."""
    return {INTENT_KEY: RECORDS_INTENT, RECORD_OP_KEY: op, **fields}


# --- a pid typed by a person ---


def parse_pid(text: str) -> Pid:
    """A pid typed by a person (command line, URL): a UUID if it parses as one, else an int, else the text."""
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    try:
        return int(text)
    except ValueError:
        return text


# --- the task envelope and the reply (kiwipy's shapes) ---
# The reply rules that travel: reply keys, error replies, how a reply is read, the task envelope. Keys and
# precedence follow kiwipy 0.9 (cancelled > exception > result > pending); ``error_type`` is our extra key,
# ignored by kiwipy peers, carrying the remote exception's type name; ``traceback`` (also ignored by them)
# carries the formatted traceback of a process that excepted.

RESULT_KEY = "result"
EXCEPTION_KEY = "exception"
CANCELLED_KEY = "cancelled"
PENDING_KEY = "pending"
HOST_KEY = "host"
#: Extra reply key (ignored by kiwipy peers) carrying the remote exception's type name.
ERROR_TYPE_KEY = "error_type"
#: Extra reply key (ignored by kiwipy peers) carrying the remote exception's formatted traceback.
TRACEBACK_KEY = "traceback"
#: Longest traceback text sent in a reply (its last characters are kept: the innermost frames).
MAX_TRACEBACK_CHARS = 16_000

#: Remote error type names read as :class:`ProcessKilled`.
KILLED_TYPES = frozenset({"KilledError", "ProcessKilled"})
#: Remote error type names read as :class:`TaskRejected`.
REJECTED_TYPES = frozenset({"TaskRejected", "LoadError", "DecodeError", "InvalidTask"})


def bounded_traceback(text: str) -> str:
    """``text`` cut to its last :data:`MAX_TRACEBACK_CHARS` characters (the innermost frames)."""
    return text if len(text) <= MAX_TRACEBACK_CHARS else "...\n" + text[-MAX_TRACEBACK_CHARS:]


@runtime_checkable
class _RemoteTraceback(Protocol):
    """An error that carries a failed process's traceback (``errors.RemoteError`` and its kin)."""

    remote_traceback: str | None


def _traceback_of(exc: BaseException) -> str | None:
    """The traceback a reply carries: a failed process's (``RemoteError.remote_traceback``), nothing else
    (a handler's own failure or a refusal says what went wrong in its message)."""
    remote = exc.remote_traceback if isinstance(exc, _RemoteTraceback) else None
    return bounded_traceback(remote) if isinstance(remote, str) and remote else None


def exception_reply(exc: BaseException) -> dict[str, object]:
    """A reply carrying ``str(exc)`` (what kiwipy peers read) plus its type name and, for a process that
    excepted, its traceback (what we read)."""
    reply: dict[str, object]
    if isinstance(exc, RemoteError) and exc.remote_type:
        reply = {EXCEPTION_KEY: exc.message, ERROR_TYPE_KEY: exc.remote_type}
    else:
        reply = {EXCEPTION_KEY: str(exc) or type(exc).__name__, ERROR_TYPE_KEY: type(exc).__name__}
    text = _traceback_of(exc)
    if text is not None:
        reply[TRACEBACK_KEY] = text
    return reply


def reply_outcome(reply: object) -> tuple[bool, object]:
    """Interpret one reply: ``(False, None)`` for pending, ``(True, value)`` for a result; raise for errors.

    Precedence follows kiwipy: cancelled > exception > result > pending.
    """
    if not isinstance(reply, dict):
        raise DecodeError(f"reply is not a mapping but {type(reply).__name__}")
    if CANCELLED_KEY in reply:
        raise RemoteError(str(reply[CANCELLED_KEY] or "the remote handler was cancelled"), "CancelledError")
    if EXCEPTION_KEY in reply:
        message = str(reply[EXCEPTION_KEY])
        kind = reply.get(ERROR_TYPE_KEY)
        kind = kind if isinstance(kind, str) else None
        remote_tb = reply.get(TRACEBACK_KEY)
        remote_tb = remote_tb if isinstance(remote_tb, str) else None
        if kind in KILLED_TYPES:
            raise ProcessKilled(message, kind, remote_tb)
        if kind == DuplicatePid.__name__:  # a TaskRejected a caller may tell apart: the pid is taken
            raise DuplicatePid(message)
        if kind in REJECTED_TYPES:
            raise TaskRejected(f"{kind}: {message}")
        raise RemoteError(message, kind, remote_tb)
    if RESULT_KEY in reply:
        return True, reply[RESULT_KEY]
    if PENDING_KEY in reply:
        return False, None
    raise DecodeError(f"reply has none of result/exception/cancelled/pending: keys {sorted(map(str, reply))}")


def parse_task_envelope(decoded: object) -> tuple[object, bool]:
    """Split a decoded task body into ``(task, no_reply)``; raise :class:`InvalidTask` if it is not a pair."""
    if not isinstance(decoded, (list, tuple)) or len(decoded) != 2:
        raise InvalidTask(f"task envelope must be a pair (task, no_reply), got {type(decoded).__name__}")
    task, no_reply = decoded
    if not isinstance(no_reply, bool):
        raise InvalidTask(f"task envelope's no_reply must be a bool, got {type(no_reply).__name__}")
    return task, no_reply


# --- our extensions in AMQP headers, which kiwipy and plumpy neither send nor read ---
# kiwipy and plumpy send every message with an empty ``headers`` table and never read it (kiwipy builds its
# messages in https://github.com/aiidateam/kiwipy/blob/main/src/kiwipy/rmq/messages.py), so a header is a way
# for two ends of ours to agree on something per message while a kiwipy or plumpy peer sees exactly kiwipy's
# wire. Each extension is negotiated by the message that carries it: an end that does not send the header gets
# kiwipy's behaviour, an end that does not read it (kiwipy, plumpy, an older process_comms) ignores it.
# - NO_PENDING on a task: the sender does not wait for ``pending`` replies (our flat futures), so the worker
#   sends only the final reply. A task without it (kiwipy's clients, our kiwipy-mode facades, which nest one
#   future level per ``pending``) gets every ``pending`` reply as before.
# - SUBJECT, SENDER and SENDER_TYPE on a broadcast: its subject and sender outside the encoded body, so a
#   receiving communicator of ours drops a broadcast that none of its local subscribers wants (its own
#   included) without decoding it. The body still carries both, as kiwipy's envelope does.

#: Task header: the sender settles on the final reply alone (no ``pending`` replies wanted).
NO_PENDING = "x-pc-no-pending"
#: Broadcast headers: the envelope's subject, and its sender with the sender's type (to rebuild it exactly).
SUBJECT = "x-pc-subject"
SENDER = "x-pc-sender"
SENDER_TYPE = "x-pc-sender-type"

_SENDER_TYPES: dict[str, type] = {"str": str, "int": int, "uuid": uuid.UUID}
_KIND_OF = {cls: name for name, cls in _SENDER_TYPES.items()}
_NO_HEADERS: dict[str, Any] = {}


def task_headers(wants_pending: bool) -> dict[str, Any]:
    """The headers of a task whose sender does (not) wait for ``pending`` replies."""
    return _NO_HEADERS if wants_pending else {NO_PENDING: True}


def wants_pending(headers: Mapping[str, Any] | None) -> bool:
    """Whether the sender of a task with ``headers`` waits for ``pending`` replies (kiwipy's always do)."""
    return not (headers and headers.get(NO_PENDING))


def broadcast_headers(subject: Any, sender: Any) -> dict[str, Any]:
    """The headers that let a receiver filter a broadcast before decoding it; none when a value could not be
    rebuilt exactly from a header (then every receiver decodes it, as kiwipy's do)."""
    if subject is not None and not isinstance(subject, str):
        return _NO_HEADERS
    headers: dict[str, Any] = {}
    if subject is not None:
        headers[SUBJECT] = subject
    if sender is not None:
        kind = _KIND_OF.get(type(sender))
        if kind is None:
            return _NO_HEADERS
        headers[SENDER], headers[SENDER_TYPE] = str(sender), kind
    headers[SENDER_TYPE] = headers.get(SENDER_TYPE, "none")  # marks the extension even for (None, None)
    return headers


def _routing(headers: Mapping[str, Any] | None) -> tuple[Any, Any] | None:
    """``(subject, sender)`` from a broadcast's headers, or None if they do not carry them."""
    if not headers:
        return None
    kind = headers.get(SENDER_TYPE)
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind is None:
        return None
    subject = headers.get(SUBJECT)
    if isinstance(subject, bytes):
        subject = subject.decode()
    if kind == "none":
        return subject, None
    cls = _SENDER_TYPES.get(kind)
    raw = headers.get(SENDER)
    if cls is None or raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return subject, cls(text)
    except ValueError:
        return None


def broadcast_unwanted(headers: Mapping[str, Any] | None, subscribers: Iterable[Any]) -> bool:
    """True if the broadcast's headers say that no subscriber in ``subscribers`` wants it.

    A subscriber says what it wants with kiwipy's ``is_filtered(sender, subject)`` (every
    ``kiwipy.BroadcastFilter`` has it), or the one it wraps (``__wrapped__``); one without it wants everything.
    Without our headers: False.
    """
    routing = _routing(headers)
    if routing is None:
        return False
    subject, sender = routing
    for subscriber in subscribers:
        is_filtered = getattr(subscriber, "is_filtered", None)
        if is_filtered is None:  # a wrapper (functools.wraps: a thread facade's) asks what it wraps
            is_filtered = getattr(getattr(subscriber, "__wrapped__", None), "is_filtered", None)
        if not callable(is_filtered) or not is_filtered(sender, subject):
            return False
    return True


# --- a process's status, whoever answers it: the process while a worker holds it, its record after ---
# The one rule (docs/fleet.md, "Who answers for a process"): an ended process still held by its worker and
# the record the fleet keeps of it give the same status dict, outputs and exception included, so an answer
# does not depend on whether the worker has let go of the process yet. A process whose holder is gone
# without handing it back ends as ``excepted`` with an exception of type LOST_TYPE.

#: The exception type of a record whose process was lost (raised to waiters as ``errors.ProcessLost``).
LOST_TYPE: Final = "ProcessLost"


#: The keys of a record that :func:`status_of_record` reads: a worker makes an ended process's status from these
#: alone, not from the whole record (its inputs, history and log lines are not in a status).
STATUS_RECORD_KEYS: Final = (
    *("pid", "class", "state_name", "paused", "status", "progress", "host", "ctime", "mtime", "label"),
    *("outputs", "exception", "source", "source_reason", "live"),
)


def status_of_record(record: Mapping[str, object]) -> ProcessStatus:
    """The status dict of a record, as a live process answers it, plus ``outputs`` (finished) or
    ``exception`` (excepted: type, message, traceback); ``record`` is True and ``live`` says whether a
    worker runs the process now (False: it ended, or it is parked)."""
    state = str(record.get("state_name") or "")
    cls = str(record.get("class") or "")
    status: dict[str, object] = {
        "ctime": record.get("ctime"),
        "mtime": record.get("mtime"),
        "paused": bool(record.get("paused")),
        "process_string": f"<{cls.rpartition(':')[2] or cls}> (ProcessState.{state.upper()})",
        "state": f"ProcessState.{state.upper()}",
        "state_name": state,
        "pid": record.get("pid"),
        "class": cls,
        "status": record.get("status"),
        "progress": record.get("progress") or {},
        "host": record.get("host"),
        "label": record.get("label"),
        "record": True,
        "live": bool(record.get("live", False)),
    }
    if state == "finished":
        status["outputs"] = record.get("outputs")
    if record.get("exception") is not None:
        status["exception"] = record.get("exception")
    if record.get("source") is not None:  # read from the store: no worker answered
        status["source"], status["source_reason"] = record["source"], record.get("source_reason")
    return cast(ProcessStatus, status)


def is_lost(record_or_status: Mapping[str, object]) -> bool:
    """True if a record (or a status dict made from one) says its process was lost."""
    exception = record_or_status.get("exception")
    return (
        record_or_status.get("state_name") == "excepted"
        and isinstance(exception, dict)
        and exception.get("type") == LOST_TYPE
    )


def lost_record(record: Mapping[str, object], reason: str, now: float) -> dict[str, object]:
    """``record`` marked lost: ``excepted`` with a :data:`LOST_TYPE` exception saying ``reason``, the
    status ``lost: <reason>`` and a ``lost`` event in its history."""
    earlier = record.get("history")
    history = [*(earlier if isinstance(earlier, list) else []), {"event": "lost", "time": now, "message": reason}]
    exception = {"type": LOST_TYPE, "message": reason, "traceback": None}
    return {
        **record,
        "state_name": "excepted",
        "status": f"lost: {reason}",
        "exception": exception,
        "history": history,
        "mtime": now,
    }
