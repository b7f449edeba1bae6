"""Message bodies and constants against the wire protocol (§4.3, §5.1, §6.1-6.2, §7), and YAML interop with plumpy.

plumpy 0.26 is installed in the test environment, so every builder is also compared with plumpy's own, and every
encoding is checked against plumpy/kiwipy's codec (``yaml.dump`` / ``yaml.load(Loader=FullLoader)`` after
``import plumpy``) in both directions.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from typing import Any

import kiwipy.rmq.defaults as kiwi_defaults
import plumpy  # noqa: F401 - registers the !uuid and !plumpy:Bundle tags on PyYAML's default classes
import plumpy.process_comms as ppc
import pytest
import yaml

import process_comms
from process_comms.wire import messages
from process_comms.wire.codec import YamlCodec
from process_comms.wire.messages import DefaultObjectLoader, ObjectLoader

PID = uuid.UUID("7fc10d11-f540-4696-b868-e7a6cceed24f")
CLASS_ID = "collections:OrderedDict"


def plumpy_encode(obj: Any) -> bytes:
    """What a plumpy/kiwipy peer puts on the wire."""
    data: bytes = kiwi_defaults.ENCODER(obj)
    return data


def plumpy_decode(data: bytes) -> Any:
    """What a plumpy/kiwipy peer makes of our bytes."""
    return kiwi_defaults.DECODER(data)


# --------------------------------------------------------------------------------------------------------------------
# §4.3 request schema
# --------------------------------------------------------------------------------------------------------------------


def test_intent_constants() -> None:
    assert process_comms.Intent.PLAY == "play"
    assert process_comms.Intent.PAUSE == "pause"
    assert process_comms.Intent.KILL == "kill"
    assert process_comms.Intent.STATUS == "status"
    assert set(process_comms.Intent.ALL) == {"play", "pause", "kill", "status"}
    assert len(process_comms.Intent.ALL) == 4


@pytest.mark.parametrize("intent", ["PLAY", "PAUSE", "KILL", "STATUS"])
def test_intent_constants_equal_plumpy(intent: str) -> None:
    assert getattr(process_comms.Intent, intent) == getattr(ppc.Intent, intent)


def test_key_constants() -> None:
    assert messages.INTENT_KEY == "intent"
    assert messages.MESSAGE_TEXT_KEY == "message"
    assert messages.FORCE_KILL_KEY == "force_kill"
    assert messages.TASK_KEY == "task"
    assert messages.TASK_ARGS == "args"
    assert messages.PERSIST_KEY == "persist"
    assert messages.PROCESS_CLASS_KEY == "process_class"
    assert messages.ARGS_KEY == "init_args"
    assert messages.KWARGS_KEY == "init_kwargs"
    assert messages.NOWAIT_KEY == "nowait"
    assert messages.PID_KEY == "pid"
    assert messages.TAG_KEY == "tag"
    assert messages.LAUNCH_TASK == "launch"
    assert messages.CONTINUE_TASK == "continue"
    assert messages.CREATE_TASK == "create"
    assert messages.TASK_TYPES == ("launch", "continue", "create")


@pytest.mark.parametrize(
    "name",
    [
        "INTENT_KEY",
        "MESSAGE_TEXT_KEY",
        "FORCE_KILL_KEY",
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
    ],
)
def test_key_constants_equal_plumpy(name: str) -> None:
    assert getattr(messages, name) == getattr(ppc, name)


def test_play_body() -> None:
    assert process_comms.MessageBuilder.play() == {"intent": "play", "message": None}
    assert process_comms.MessageBuilder.play("go on") == {"intent": "play", "message": "go on"}


def test_pause_body() -> None:
    assert process_comms.MessageBuilder.pause() == {"intent": "pause", "message": None}
    assert process_comms.MessageBuilder.pause("maintenance") == {"intent": "pause", "message": "maintenance"}


def test_kill_body_force_kill_defaults_to_false() -> None:
    body = process_comms.MessageBuilder.kill()
    assert body == {"intent": "kill", "message": None, "force_kill": False}
    assert body["force_kill"] is False


def test_kill_body_with_text_and_force() -> None:
    assert process_comms.MessageBuilder.kill("stop it", force_kill=True) == {
        "intent": "kill",
        "message": "stop it",
        "force_kill": True,
    }
    assert process_comms.MessageBuilder.kill("stop it") == {"intent": "kill", "message": "stop it", "force_kill": False}


def test_status_body() -> None:
    assert process_comms.MessageBuilder.status() == {"intent": "status", "message": None}


def test_builders_return_fresh_dicts() -> None:
    first = process_comms.MessageBuilder.pause()
    first["message"] = "mutated"
    assert process_comms.MessageBuilder.pause() == {"intent": "pause", "message": None}


# --------------------------------------------------------------------------------------------------------------------
# §6.2 task bodies
# --------------------------------------------------------------------------------------------------------------------


def test_launch_body_defaults() -> None:
    body = process_comms.create_launch_body(collections.OrderedDict)
    assert body == {
        "task": "launch",
        "args": {
            "process_class": CLASS_ID,
            "persist": False,
            "nowait": True,
            "init_args": None,
            "init_kwargs": None,
        },
    }
    assert body["args"]["nowait"] is True  # the helper's default differs from the controller's


def test_launch_body_all_arguments() -> None:
    body = process_comms.create_launch_body(
        CLASS_ID, init_args=[1, 2], init_kwargs={"inputs": {"a": 1}}, persist=True, nowait=False
    )
    assert body == {
        "task": "launch",
        "args": {
            "process_class": CLASS_ID,
            "persist": True,
            "nowait": False,
            "init_args": [1, 2],
            "init_kwargs": {"inputs": {"a": 1}},
        },
    }


def test_continue_body_defaults() -> None:
    body = process_comms.create_continue_body(PID)
    assert body == {"task": "continue", "args": {"pid": PID, "nowait": False, "tag": None}}
    assert body["args"]["nowait"] is False
    assert body["args"]["pid"] is PID  # the typed pid travels, not its string


def test_continue_body_all_arguments() -> None:
    assert process_comms.create_continue_body(42, tag="checkpoint-1", nowait=True) == {
        "task": "continue",
        "args": {"pid": 42, "nowait": True, "tag": "checkpoint-1"},
    }


def test_create_body_defaults_has_no_nowait() -> None:
    body = process_comms.create_create_body(collections.OrderedDict)
    assert body == {
        "task": "create",
        "args": {"process_class": CLASS_ID, "persist": False, "init_args": None, "init_kwargs": None},
    }
    assert "nowait" not in body["args"]


def test_create_body_all_arguments() -> None:
    assert process_comms.create_create_body(CLASS_ID, init_args=(3,), init_kwargs={"x": None}, persist=True) == {
        "task": "create",
        "args": {"process_class": CLASS_ID, "persist": True, "init_args": (3,), "init_kwargs": {"x": None}},
    }


@pytest.mark.parametrize("builder", [process_comms.create_launch_body, process_comms.create_create_body])
def test_process_class_is_module_colon_name(builder: Callable[..., dict[str, Any]]) -> None:
    assert builder(collections.OrderedDict)["args"]["process_class"] == "collections:OrderedDict"
    assert builder(uuid.UUID)["args"]["process_class"] == "uuid:UUID"
    # a string identifier is passed through without importing it: the client need not have the worker's code
    assert builder("collections:OrderedDict")["args"]["process_class"] == "collections:OrderedDict"
    assert builder("no_such_module_xyz_123:Proc")["args"]["process_class"] == "no_such_module_xyz_123:Proc"


@pytest.mark.parametrize("builder", [process_comms.create_launch_body, process_comms.create_create_body])
@pytest.mark.parametrize("identifier", ["no-colon", ":Name", "module:", "a:b:c"])
def test_malformed_process_class_refused(builder: Callable[..., dict[str, Any]], identifier: str) -> None:
    with pytest.raises(process_comms.LoadError):
        builder(identifier)


def test_a_string_identifier_is_not_imported_by_the_client() -> None:
    import sys

    assert "this_module_must_not_be_imported_xyz" not in sys.modules
    process_comms.create_launch_body("this_module_must_not_be_imported_xyz:Proc")
    assert "this_module_must_not_be_imported_xyz" not in sys.modules


class _RecordingLoader(ObjectLoader):
    """A loader that identifies everything as a fixed string and records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def load_object(self, identifier: str) -> Any:
        raise AssertionError("the builders must not load, only identify")

    def identify_object(self, obj: Any) -> str:
        self.seen.append(obj)
        return "custom.module:Identified"


@pytest.mark.parametrize("builder", [process_comms.create_launch_body, process_comms.create_create_body])
def test_process_class_uses_given_loader(builder: Callable[..., dict[str, Any]]) -> None:
    loader = _RecordingLoader()
    body = builder(collections.OrderedDict, loader=loader)
    assert body["args"]["process_class"] == "custom.module:Identified"
    assert loader.seen == [collections.OrderedDict]


@pytest.mark.parametrize("builder", [process_comms.create_launch_body, process_comms.create_create_body])
def test_process_class_uses_global_loader(builder: Callable[..., dict[str, Any]]) -> None:
    loader = _RecordingLoader()
    process_comms.set_object_loader(loader)
    try:
        assert builder(collections.OrderedDict)["args"]["process_class"] == "custom.module:Identified"
    finally:
        process_comms.set_object_loader(None)
    assert isinstance(process_comms.get_object_loader(), DefaultObjectLoader)
    assert builder(collections.OrderedDict)["args"]["process_class"] == CLASS_ID


# --------------------------------------------------------------------------------------------------------------------
# Equality with plumpy's own builders
# --------------------------------------------------------------------------------------------------------------------

# (ours, plumpy's) for the same arguments; plumpy's loader cannot take a string identifier, so it gets the class
BUILDER_CASES: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
    ("play", lambda: process_comms.MessageBuilder.play(), lambda: ppc.MessageBuilder.play()),
    ("play-text", lambda: process_comms.MessageBuilder.play("x"), lambda: ppc.MessageBuilder.play("x")),
    ("pause", lambda: process_comms.MessageBuilder.pause(), lambda: ppc.MessageBuilder.pause()),
    ("pause-text", lambda: process_comms.MessageBuilder.pause("why"), lambda: ppc.MessageBuilder.pause("why")),
    ("kill", lambda: process_comms.MessageBuilder.kill(), lambda: ppc.MessageBuilder.kill()),
    ("kill-text", lambda: process_comms.MessageBuilder.kill("bye"), lambda: ppc.MessageBuilder.kill("bye")),
    (
        "kill-force",
        lambda: process_comms.MessageBuilder.kill("bye", force_kill=True),
        lambda: ppc.MessageBuilder.kill("bye", force_kill=True),
    ),
    ("status", lambda: process_comms.MessageBuilder.status(), lambda: ppc.MessageBuilder.status()),
    (
        "launch-class",
        lambda: process_comms.create_launch_body(collections.OrderedDict),
        lambda: ppc.create_launch_body(collections.OrderedDict),
    ),
    (
        "launch-string",
        lambda: process_comms.create_launch_body(CLASS_ID),
        lambda: ppc.create_launch_body(collections.OrderedDict),
    ),
    (
        "launch-full",
        lambda: process_comms.create_launch_body(
            CLASS_ID, init_args=[1, "a"], init_kwargs={"inputs": {"x": 1}}, persist=True, nowait=False
        ),
        lambda: ppc.create_launch_body(
            collections.OrderedDict, init_args=[1, "a"], init_kwargs={"inputs": {"x": 1}}, persist=True, nowait=False
        ),
    ),
    ("continue-uuid", lambda: process_comms.create_continue_body(PID), lambda: ppc.create_continue_body(PID)),
    (
        "continue-int-full",
        lambda: process_comms.create_continue_body(7, tag="t", nowait=True),
        lambda: ppc.create_continue_body(7, tag="t", nowait=True),
    ),
    (
        "create-class",
        lambda: process_comms.create_create_body(collections.OrderedDict),
        lambda: ppc.create_create_body(collections.OrderedDict),
    ),
    (
        "create-full",
        lambda: process_comms.create_create_body(CLASS_ID, init_args=[2], init_kwargs={"k": "v"}, persist=True),
        lambda: ppc.create_create_body(collections.OrderedDict, init_args=[2], init_kwargs={"k": "v"}, persist=True),
    ),
]


@pytest.mark.parametrize(("ours", "theirs"), [(o, t) for _, o, t in BUILDER_CASES], ids=[c[0] for c in BUILDER_CASES])
def test_builders_equal_plumpy(ours: Callable[[], Any], theirs: Callable[[], Any]) -> None:
    mine, plumpys = ours(), theirs()
    assert mine == plumpys
    # equal values with equal types all the way down (True == 1 would hide a wrong type)
    assert repr(mine) == repr(plumpys)


# --------------------------------------------------------------------------------------------------------------------
# §2, §5.1, §6.1, §7 encoding and interop with plumpy/kiwipy
# --------------------------------------------------------------------------------------------------------------------


def test_task_envelope_is_python_tuple() -> None:
    data = YamlCodec().encode((process_comms.create_continue_body(PID), False))
    assert data.startswith(b"!!python/tuple")
    assert b"!uuid" in data
    assert str(PID).encode() in data
    decoded = YamlCodec().decode(data)
    assert type(decoded) is tuple
    assert decoded == ({"task": "continue", "args": {"pid": PID, "nowait": False, "tag": None}}, False)


def test_uuid_pid_is_uuid_tag() -> None:
    data = YamlCodec().encode({"pid": PID})
    assert data == f'{{"pid": !uuid "{PID}"}}\n'.encode()
    assert b"!!python/object" not in data
    assert yaml.safe_load(data.replace(b"!uuid ", b"")) == {"pid": str(PID)}


def test_encoded_messages_read_the_same_as_kiwipy_block_style() -> None:
    # we write one-line flow YAML (fast to read back as JSON); a YAML peer reads it as it reads kiwipy's
    message = process_comms.MessageBuilder.kill("k")
    data = YamlCodec().encode(message)
    assert data == b'{"intent": "kill", "message": "k", "force_kill": false}\n'
    assert yaml.safe_load(data) == yaml.safe_load(plumpy_encode(message)) == message


def _broadcast(body: Any, sender: Any, subject: Any, correlation_id: Any = None) -> dict[str, Any]:
    return {"body": body, "sender": sender, "subject": subject, "correlation_id": correlation_id}


INTEROP_VALUES: list[tuple[str, Any]] = [
    ("status", process_comms.MessageBuilder.status()),
    ("pause", process_comms.MessageBuilder.pause("pause text")),
    ("play", process_comms.MessageBuilder.play()),
    ("kill", process_comms.MessageBuilder.kill("kill text")),
    ("kill-force", process_comms.MessageBuilder.kill(None, force_kill=True)),
    ("task-continue-uuid", (process_comms.create_continue_body(PID), False)),
    ("task-continue-uuid-noreply", (process_comms.create_continue_body(uuid.uuid4(), tag="t", nowait=True), True)),
    ("task-continue-int", (process_comms.create_continue_body(1234), False)),
    (
        "task-launch",
        (process_comms.create_launch_body(CLASS_ID, init_kwargs={"inputs": {"a": 1, "b": [1.5, "s"]}}), False),
    ),
    ("task-create", (process_comms.create_create_body(CLASS_ID, persist=True), True)),
    ("broadcast-state", _broadcast(None, PID, "state_changed.running.waiting")),
    ("broadcast-kill", _broadcast(process_comms.MessageBuilder.kill("kill-all text"), None, "kill")),
    ("broadcast-corr", _broadcast({"x": [1, 2]}, 42, "custom.subject", uuid.uuid4())),
    ("reply-pending", {"pending": None}),
    (
        "reply-status",
        {
            "result": {
                "ctime": 1795574952.6096103,
                "paused": False,
                "process_string": "<WaitProc> (ProcessState.WAITING)",
                "state": "ProcessState.WAITING",
            }
        },
    ),
    ("reply-exception", {"exception": "Unknown intent"}),
    ("reply-cancelled", {"cancelled": None}),
    ("task-reply-pending", {"pending": None, "host": {"hostname": "vm", "pid": 8443}}),
    ("task-reply-pid", {"result": PID, "host": {"hostname": "vm", "pid": 8443}}),
    ("task-reply-outputs", {"result": {"default": 5}, "host": {"hostname": "vm", "pid": 1}}),
    ("task-reply-exception", {"exception": "UUID('x')", "host": {"hostname": "vm", "pid": 2}}),
]


def _deep_equal(left: Any, right: Any) -> bool:
    """Equality that also requires the same types (a tuple is not a list, a UUID is not its string)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_deep_equal(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(_deep_equal(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


@pytest.mark.parametrize("value", [v for _, v in INTEROP_VALUES], ids=[n for n, _ in INTEROP_VALUES])
def test_plumpy_decodes_our_bytes(value: Any) -> None:
    assert _deep_equal(plumpy_decode(YamlCodec().encode(value)), value)


@pytest.mark.parametrize("value", [v for _, v in INTEROP_VALUES], ids=[n for n, _ in INTEROP_VALUES])
def test_we_decode_plumpy_bytes(value: Any) -> None:
    data = plumpy_encode(value)
    assert _deep_equal(YamlCodec().decode(data), value)
    # and the same through a plain yaml.dump after `import plumpy` (what kiwipy's ENCODER is)
    assert _deep_equal(YamlCodec().decode(yaml.dump(value, encoding="utf-8")), value)


def test_plumpy_uuid_is_quoted_and_we_read_it() -> None:
    data = plumpy_encode({"result": PID})
    assert data == f"result: !uuid '{PID}'\n".encode()
    assert YamlCodec().decode(data) == {"result": PID}


def test_observed_wire_samples_decode() -> None:
    """The literal samples recorded in the protocol document (§3.2, §5.1, §6.1)."""
    task = (
        b"!!python/tuple\n- args:\n    nowait: false\n    pid: !uuid '7fc10d11-f540-4696-b868-e7a6cceed24f'\n"
        b"    tag: null\n  task: continue\n- false\n"
    )
    assert _deep_equal(YamlCodec().decode(task), (process_comms.create_continue_body(PID), False))
    reply = b"host: {hostname: vm, pid: 8443}\nresult: !uuid '52282381-9b61-49cd-a9d0-acd2daebdbf1'\n"
    assert YamlCodec().decode(reply) == {
        "host": {"hostname": "vm", "pid": 8443},
        "result": uuid.UUID("52282381-9b61-49cd-a9d0-acd2daebdbf1"),
    }
    broadcast = (
        b"body: {force_kill: false, intent: kill, message: kill-all text}\ncorrelation_id: null\n"
        b"sender: null\nsubject: kill\n"
    )
    assert YamlCodec().decode(broadcast) == _broadcast(process_comms.MessageBuilder.kill("kill-all text"), None, "kill")
    pending = b"pending: null\n"
    assert YamlCodec().decode(pending) == {"pending": None}


def test_json_task_envelope_from_foreign_client() -> None:
    """§2.3: a raw client may send JSON; the YAML codec reads it (a 2-element list instead of a tuple)."""
    body = b'[{"task": "launch", "args": {"process_class": "collections:OrderedDict", "nowait": true}}, false]'
    assert YamlCodec().decode(body) == [
        {"task": "launch", "args": {"process_class": "collections:OrderedDict", "nowait": True}},
        False,
    ]
    assert YamlCodec().decode(b'{"intent": "status", "message": null}') == process_comms.MessageBuilder.status()


@pytest.mark.parametrize(
    ("subject", "transition"),
    [
        ("state_changed.None.created", ("None", "created")),
        ("state_changed.running.finished", ("running", "finished")),
        ("state_changed.running", None),
        ("state_changed..finished", None),
        ("intent_result.pause", None),
        (None, None),
    ],
)
def test_state_changed_subjects_are_parsed_in_one_place(subject: Any, transition: Any) -> None:
    assert messages.state_transition(subject) == transition
    assert messages.state_from_subject(subject) == (None if transition is None else transition[1])
    if transition is not None:
        assert messages.is_terminal(transition[1]) is (transition[1] in messages.TERMINAL_STATES)
