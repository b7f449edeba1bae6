"""The codecs are symmetric: whatever they encode under the one size limit, they decode back; over it, or
past the nesting depth, encoding raises EncodeError and a received body DecodeError; nothing in between.

Before, values of more than ~50,000 items left the flow-YAML fast path for block YAML, which the decoder
refuses over 1 MiB: outputs of 300,000 ints failed with DecodeError at the caller, and list_processes of
5,000 records failed. Ints over 4,300 digits (Python's int/str limit) were an EncodeError in YAML and
JSON, and made a record's repr() raise, which lost the whole batch of records.
"""

from __future__ import annotations

import datetime
import itertools
import math
import sys
import uuid
from typing import Any

import plumpy  # noqa: F401 - registers !uuid on PyYAML's loaders, as on a plumpy peer
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import process_comms
from process_comms import defaults
from process_comms.wire import codec as flowyaml  # the flow-YAML fast path lives in the codec
from process_comms.wire.codec import DEFAULT_MAX_MESSAGE_BYTES, MAX_NESTING_DEPTH, JsonCodec, YamlCodec
from process_comms.worker.persistence._records import decode_record, record_texts

# bounded in time: CI runs the suite on four interpreters, on shared machines (generous per-example deadline)
BOUNDED = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def same(left: Any, right: Any) -> bool:
    """Equality that also requires the same types all the way down (True is not 1, a tuple is not a list)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        right_keys = {k: k for k in right}  # the key objects themselves: 1, 1.0 and True look each other up
        return len(left) == len(right) and all(
            k in right_keys and same(k, right_keys[k]) and same(v, right[k]) for k, v in left.items()
        )
    if isinstance(left, (list, tuple)):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def has_surrogate_pair(value: Any) -> bool:
    """True if a str in ``value`` holds a high surrogate right before a low one (refused: see the codec)."""
    if isinstance(value, str):
        return any("\ud800" <= a <= "\udbff" and "\udc00" <= b <= "\udfff" for a, b in itertools.pairwise(value))
    if isinstance(value, dict):
        return any(has_surrogate_pair(k) or has_surrogate_pair(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_surrogate_pair(v) for v in value)
    return False


# every code point, surrogates included (Hypothesis leaves them out by default)
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
big_ints = st.builds(lambda e, s: s * 7**e, st.integers(2000, 12_000), st.sampled_from([1, -1]))
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | big_ints
    | st.floats()  # NaN and both infinities included
    | any_text
    | st.uuids()
)
keys = any_text | st.integers() | st.uuids() | st.none() | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.lists(inner, max_size=4).map(tuple) | st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=25,
)


def record_summaries(n: int) -> list[dict[str, Any]]:
    """What ``list_processes(limit=n)`` carries: one summary per process."""
    return [
        {
            "pid": uuid.uuid4(),
            "class": "tests.procs:Add",
            "state_name": "finished",
            "paused": False,
            "status": None,
            "progress": {"done": i},
            "host": "worker-1",
            "ctime": 1795574952.6096103 + i,
            "mtime": 1795574953.5,
            "live": False,
        }
        for i in range(n)
    ]


LARGE = [
    pytest.param({"outputs": list(range(300_000))}, id="300k-ints"),
    pytest.param({"result": record_summaries(5000)}, id="list_processes-5000"),
    pytest.param({"values": [i / 7 for i in range(100_000)] + [math.nan, math.inf, -math.inf]}, id="100k-floats"),
    pytest.param([(i, str(i)) for i in range(60_000)], id="60k-tuples"),
    pytest.param({i: {"pid": uuid.uuid4()} for i in range(60_000)}, id="60k-int-keys"),
    pytest.param({uuid.uuid4(): i for i in range(30_000)}, id="30k-uuid-keys"),
    pytest.param(["é😀\udc80 " * 3] * 100_000, id="100k-unicode-strings"),
    pytest.param("x" * (6 * 1024 * 1024), id="6MiB-string"),
    pytest.param({"n": 10**100_000, "m": -(3**200_000)}, id="100k-digit-ints"),
]


@pytest.mark.parametrize("value", LARGE)
def test_large_messages_round_trip_through_the_fast_path(value: Any) -> None:
    data = YamlCodec().encode(value)
    assert len(data) <= DEFAULT_MAX_MESSAGE_BYTES
    assert flowyaml.load(data) is not flowyaml.NOT_FLOW  # never block YAML, which is refused over 1 MiB
    assert same(YamlCodec().decode(data), value)


@pytest.mark.parametrize("value", LARGE[:3] + LARGE[-2:])
def test_large_messages_round_trip_through_the_json_codec(value: Any) -> None:
    if isinstance(value, dict) and "values" in value:  # JSON has no NaN: the finite floats only
        value = {"values": [v for v in value["values"] if math.isfinite(v)]}
    codec = JsonCodec()
    assert codec.decode(codec.encode(value)) == value


@BOUNDED
@given(values)
@example(list(range(300_000)))
@example({"k": 10**5000, 10**5000: [-(10**4301)]})
@example(["\ud800", "a\udfffb", "😀", "\x7f!!python/tuple [", '!uuid "0"', '!!float ".nan"'])
@example({"!pc": 1, "__process_comms_uuid__": "x", None: (), 1.5: [math.nan]})
@example(["\\ud83d\udc00", "\\\\ud83d\\ude00"])  # escape-like text next to a lone surrogate
def test_yaml_encode_decode_is_identity(value: Any) -> None:
    codec = YamlCodec()
    if has_surrogate_pair(value):
        with pytest.raises(process_comms.EncodeError, match="surrogate"):
            codec.encode(value)
        return
    data = codec.encode(value)
    assert same(codec.decode(data), value)


@settings(max_examples=60, deadline=5000)
@given(values.filter(lambda v: not has_surrogate_pair(v)))
@example({"k": 10**5000, 10**5000: [-(10**4301)], None: (), 1.5: [math.nan, -math.inf]})
@example(["\ud800", "a\udfffb", "😀", "\x7f!!python/tuple [", '!uuid "0"', '!!float ".nan"', "\x85\u2028\ufeff"])
def test_plumpy_peers_read_what_we_write_as_we_do(value: Any) -> None:
    # kiwipy's decoder (FullLoader) and AiiDA's (Loader): pure-Python PyYAML, which reads \udXXX escapes
    data = YamlCodec().encode(value)
    assert same(yaml.load(data, Loader=yaml.FullLoader), value)
    assert same(yaml.load(data, Loader=yaml.Loader), value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | big_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    # JSON joins an escaped surrogate pair into one character: the JSON codec keeps it (the YAML one refuses)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    | st.uuids(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


@BOUNDED
@given(json_values)
@example([10**5000, {"k": -(10**4400)}])
def test_json_encode_decode_is_identity(value: Any) -> None:
    codec = JsonCodec()
    assert same(codec.decode(codec.encode(value)), value)


@BOUNDED
@given(values, st.integers(16, 4096))
def test_under_the_limit_it_decodes_over_it_it_is_an_encode_error(value: Any, limit: int) -> None:
    codec = YamlCodec(max_bytes=limit)
    try:
        data = codec.encode(value)
    except process_comms.EncodeError as exc:
        assert "exceeds the limit" in str(exc) or "surrogate" in str(exc)
        assert "surrogate" in str(exc) or len(YamlCodec().encode(value)) > limit
        return
    assert len(data) <= limit
    assert same(codec.decode(data), value)


@pytest.mark.parametrize("codec_cls", [YamlCodec, JsonCodec])
def test_the_limit_is_exact_both_ways(codec_cls: Any) -> None:
    value = {"outputs": list(range(300_000))}
    size = len(codec_cls().encode(value))
    at = codec_cls(max_bytes=size)
    assert at.decode(at.encode(value)) == value
    under = codec_cls(max_bytes=size - 1)
    with pytest.raises(process_comms.EncodeError, match=f"exceeds the limit of {size - 1} bytes"):
        under.encode(value)
    with pytest.raises(process_comms.DecodeError, match=f"exceeds the limit of {size - 1} bytes"):
        under.decode(at.encode(value))


def test_a_value_over_the_message_limit_is_an_encode_error_naming_it() -> None:
    value = {"outputs": list(range(1_500_000))}  # ~12 MB: the writer stops at the limit, it does not finish
    with pytest.raises(process_comms.EncodeError, match=f"limit of {DEFAULT_MAX_MESSAGE_BYTES} bytes"):
        YamlCodec().encode(value)
    shared = ["x" * 100_000]
    with pytest.raises(process_comms.EncodeError, match="exceeds the limit"):
        YamlCodec().encode([shared] * 100)  # 10 MB once its shared parts are written out


def test_a_long_string_counts_once_against_the_limit() -> None:
    value = {"s": "x" * (5 * 1024 * 1024), "v": [[i] for i in range(100_000)]}  # 5.9 MB in all
    assert YamlCodec().decode(YamlCodec().encode(value)) == value


def test_nesting_up_to_the_stated_depth_round_trips_and_beyond_is_an_encode_error() -> None:
    assert MAX_NESTING_DEPTH == defaults.MAX_NESTING_DEPTH
    deepest: Any = 1
    for n in range(MAX_NESTING_DEPTH):
        deepest = [deepest] if n % 3 else ({"k": deepest} if n % 2 else (deepest,))
    codec = YamlCodec()
    assert same(codec.decode(codec.encode(deepest)), deepest)
    assert same(yaml.load(codec.encode(deepest), Loader=yaml.FullLoader), deepest)
    with pytest.raises(process_comms.EncodeError, match=f"more than {MAX_NESTING_DEPTH} levels"):
        codec.encode([deepest])
    with pytest.raises(process_comms.EncodeError, match=f"more than {MAX_NESTING_DEPTH} levels"):
        codec.encode([deepest, b"bytes take the block-YAML path"])


def test_values_outside_json_travel_as_block_yaml_refused_where_the_decoder_would_refuse_them() -> None:
    codec = YamlCodec()
    small = {"blob": b"\x00\xff", "when": datetime.date(2026, 12, 7), "set": {1, 2}}
    assert codec.decode(codec.encode(small)) == small
    big = {"blob": b"\x00\xff", "items": list(range(200_000))}  # block YAML over 1 MiB
    with pytest.raises(process_comms.EncodeError, match="block YAML"):
        codec.encode(big)


def test_a_peer_block_yaml_message_over_its_limit_is_still_refused_on_receipt() -> None:
    body = yaml.dump({"items": list(range(200_000))}, Dumper=yaml.SafeDumper).encode()  # kiwipy's style
    assert defaults.MAX_BLOCK_YAML_BYTES < len(body) < DEFAULT_MAX_MESSAGE_BYTES
    with pytest.raises(process_comms.DecodeError, match="block YAML"):
        YamlCodec().decode(body)


def test_non_str_keys_of_the_protocol_round_trip_and_peers_read_them() -> None:
    value = {1: "aiida pk", uuid.UUID(int=5): "plumpy pid", None: "none", False: "no", 2.5: "half", "s": "str"}
    data = YamlCodec().encode(value)
    assert flowyaml.load(data) == value
    assert yaml.load(data, Loader=yaml.FullLoader) == value
    # the JSON codec follows json: non-str scalar keys become their JSON text (its stated normalisation)
    assert JsonCodec().decode(JsonCodec().encode({1: "a", None: "b"})) == {"1": "a", "null": "b"}


def test_keys_too_long_for_a_yaml_simple_key_are_written_so_peers_read_them() -> None:
    # YAML readers take a simple key of at most 1024 characters: such a mapping travels as block YAML
    value = {"k" * 2000: 1, 10**5000: 2, "short": [3]}
    data = YamlCodec().encode(value)
    assert YamlCodec().decode(data) == value
    assert yaml.load(data, Loader=yaml.FullLoader) == value
    assert yaml.load(data, Loader=yaml.CSafeLoader) == value  # type: ignore[attr-defined]


def test_special_floats_behave_as_stated() -> None:
    floats = [math.nan, math.inf, -math.inf, -0.0, 1e-05, 5e-324]
    decoded = YamlCodec().decode(YamlCodec().encode(floats))  # YAML: .nan, .inf, -.inf, as PyYAML writes them
    assert same(decoded, floats) and math.copysign(1, decoded[3]) == -1
    for special in (math.nan, math.inf):
        with pytest.raises(process_comms.EncodeError):  # JSON has no NaN: refused, never written as NaN
            JsonCodec().encode({"x": special})


def test_a_sender_cannot_forge_a_marker_the_decoder_reads_as_a_value() -> None:
    # the marker form the fast reader uses inside, written by a sender: read as what a YAML peer reads
    pid = b"52282381-9b61-49cd-a9d0-acd2daebdbf1"
    forged = b'{"!pc": "uuid", "!pc": "' + pid + b'", "x": !uuid "' + pid + b'"}'
    assert YamlCodec().decode(forged) == yaml.load(forged, Loader=yaml.FullLoader)
    assert YamlCodec().decode(b'["a !uuid ", "0"]') == ["a !uuid ", "0"]
    # an escaped surrogate pair: JSON would join it into one character, YAML reads two; never the joined one
    with pytest.raises(process_comms.DecodeError):  # libyaml, under our loader, refuses surrogate escapes
        YamlCodec().decode(b'["\\ud83d\\ude00"]')
    # a user key spelled like the marker, next to typed keys, is a plain key
    value = {"!pc": 1, 5: "five", uuid.UUID(int=1): "one", "!pc!": 2}
    assert YamlCodec().decode(YamlCodec().encode(value)) == value


def test_records_with_big_ints_and_unrepresentable_values_are_kept() -> None:
    record = {"pid": 7, "outputs": {"n": 10**5000}, "odd": {10**5000}, "inputs": {"x": -(10**4400)}}
    _summary, body, inputs = record_texts(record)  # before: repr() raised ValueError and the batch was lost
    back = decode_record(body, inputs)
    assert back["outputs"]["n"] == 10**5000 and back["inputs"] == {"x": -(10**4400)}
    assert "cannot be shown" in back["odd"]["!!unencodable"]


@pytest.mark.skipif(not hasattr(sys, "set_int_max_str_digits"), reason="no int/str digit limit before 3.10.7")
def test_ints_round_trip_under_the_lowest_int_str_digit_limit() -> None:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)  # the lowest a receiver may set: our decimal ints stay under it
    try:
        value = [10**599, -(10**599), 10**600, -(10**700), 2**5000]
        for codec in (YamlCodec(), JsonCodec()):
            assert codec.decode(codec.encode(value)) == value
    finally:
        sys.set_int_max_str_digits(old)


class _ReprRaises:
    """A value no codec can hold whose ``repr`` raises, as ``repr`` of a set of ints past the digit limit does."""

    def __repr__(self) -> str:
        raise ValueError("this value cannot be shown")


@pytest.mark.parametrize("codec_cls", [YamlCodec, JsonCodec])
def test_a_value_whose_repr_raises_is_an_encode_error(codec_cls: Any) -> None:
    # before: PyYAML's RepresenterError shows the value in its message, so formatting the EncodeError raised the
    # value's own ValueError, which escaped every handler that expects an EncodeError (a worker's reply)
    with pytest.raises(process_comms.EncodeError, match="cannot encode"):
        codec_cls().encode({"outputs": {"bad": _ReprRaises(), "fine": 1}})
