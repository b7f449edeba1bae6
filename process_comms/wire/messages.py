"""The wire format: intents, RPC message bodies and task bodies, byte-for-byte as plumpy 0.26 builds them, and
our launch options, which travel where plumpy peers never read them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Hashable, Mapping, Sequence
from typing import Dict, Final, NamedTuple, Optional

from ..errors import InvalidLaunchOption, InvalidTask, ProcessCommsError
from .loaders import ObjectLoader, get_object_loader
from .types import TERMINAL_STATES, Pid, is_terminal

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
]

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


# -- our launch options (a label, a time limit): where they travel so that plumpy peers never see them -----------
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


# -- process records (docs/fleet.md): a route every worker of one installation subscribes ---------------
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
