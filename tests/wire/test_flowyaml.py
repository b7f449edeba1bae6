"""The codec's fast path: what it writes reads back the same through every YAML loader a peer may use."""

from __future__ import annotations

import math
import uuid
from typing import Any

import plumpy  # noqa: F401 - registers the !uuid constructor on PyYAML's loaders, as on a plumpy peer
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from process_comms import YamlCodec
from process_comms.wire import codec as flowyaml  # the flow-YAML fast path lives in the codec

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.uuids()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def same(left: Any, right: Any) -> bool:
    """Equality that also checks container types (tuple vs list) and float bits."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    return bool(left == right)


@settings(max_examples=400, deadline=None)
@given(values)
def test_every_yaml_peer_reads_what_we_write_as_we_do(value: Any) -> None:
    data = YamlCodec().encode(value)
    assert same(YamlCodec().decode(data), value)
    assert same(yaml.load(data, Loader=yaml.FullLoader), value)  # plumpy / kiwipy's decoder
    assert same(yaml.load(data, Loader=yaml.Loader), value)  # AiiDA's (unsafe) loader


@pytest.mark.parametrize(
    "value",
    [
        "emoji 😀 outside the BMP",
        "line\u2028separator and NEL \x85 and BOM \ufeff",
        "yes",
        "1e3",
        "null",
        "~",
        '!uuid "not a tag"',
        {"": ""},
        1e-05,
        1e300,
        -0.0,
        float("inf"),
        float("nan"),
        10**100,
        {1: "int key"},
        b"bytes",
        (1, [2, (3,)]),
    ],
)
def test_edge_values_round_trip_through_both_paths(value: Any) -> None:
    data = YamlCodec().encode(value)
    assert same(YamlCodec().decode(data), value)
    assert same(yaml.load(data, Loader=yaml.FullLoader), value)


def test_common_messages_take_the_fast_path() -> None:
    pid = uuid.uuid4()
    status = {"result": {"pid": pid, "paused": False, "ctime": 1.5, "progress": {}, "status": None}}
    data = flowyaml.dump(status)
    assert data is not None and data.startswith(b"{")
    assert flowyaml.load(data) == status
    assert flowyaml.load(b"intent: status\nmessage: null\n") is flowyaml.NOT_FLOW  # kiwipy's block style


def test_json_numbers_yaml_reads_as_strings_stay_strings() -> None:
    # PyYAML (YAML 1.1) reads 1e3 as a string: so does the fast path, to agree with YAML peers
    assert YamlCodec().decode(b'{"x": 1e3, "y": 1.5e+3}') == yaml.safe_load('{"x": 1e3, "y": 1.5e+3}')


def test_task_envelopes_take_the_fast_path_and_stay_tuples() -> None:
    envelope = ({"task": "continue", "args": {"pid": uuid.uuid4(), "nowait": False, "tag": None}}, False)
    data = YamlCodec().encode(envelope)
    assert data.startswith(b"!!python/tuple [")
    decoded = flowyaml.load(data)
    assert type(decoded) is tuple and decoded == envelope
    assert yaml.load(data, Loader=yaml.FullLoader) == envelope
    # nested tuples take the fast path too (tests/wire/test_codec_symmetry.py): a long list of them is no block YAML
    assert flowyaml.load(b"!!python/tuple [!!python/tuple [1], 2]\n") == ((1,), 2)
