"""Message codecs: the safe YAML dialect plumpy peers speak (default) and a JSON option.

Messages are data, never code: the YAML decoder knows plain types, ``!!python/tuple`` and ``!uuid``
only, and refuses every other tag (``!!python/object/apply``, ``!!python/name``, AiiDA tags, ...).

The codecs are symmetric: whatever they encode under :data:`DEFAULT_MAX_MESSAGE_BYTES`, they decode back
(tests/wire/test_codec_symmetry.py); a value over it, nested deeper than :data:`MAX_NESTING_DEPTH` or that no
receiver could read back as it was raises :class:`~process_comms.errors.EncodeError` before anything is sent.

Its parts, each under a section comment of its own, in this order:

- the limits of a message;
- the flow-YAML fast path, the YAML codec's writer and fast reader: one line of flow YAML that is JSON plus a
  few tagged scalars, written here and read by the C JSON parser (:func:`dump`, :func:`load`, :data:`NOT_FLOW`;
  the codec's own, outside ``__all__``);
- block YAML: PyYAML's safe loader and dumper with plumpy's two tags (what kiwipy peers send, and the values
  the fast path leaves to it), and the bound on what its aliases expand to;
- the codecs: :class:`YamlCodec`, :class:`JsonCodec`, :class:`FunctionCodec` (kiwipy's encoder and decoder
  pair), :func:`get_codec`.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii as _quote  # json.dumps(str) without its Python layers
from typing import Any, Final, NoReturn, Protocol, runtime_checkable

import yaml

from .. import defaults
from ..errors import DecodeError, EncodeError

__all__ = [
    "Codec",
    "YamlCodec",
    "JsonCodec",
    "FunctionCodec",
    "get_codec",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_YAML_BYTES",
    "MAX_NESTING_DEPTH",
]

# --- the limits of a message ---

#: The one size limit of a message body: :data:`process_comms.defaults.MAX_MESSAGE_BYTES` (8 MiB).
DEFAULT_MAX_MESSAGE_BYTES = defaults.MAX_MESSAGE_BYTES
#: Largest block-YAML body decoded (1 MiB): :data:`process_comms.defaults.MAX_BLOCK_YAML_BYTES`. Our
#: messages are flow YAML that is also JSON plus a few tags, read by a JSON parser at about 10-40 ms per
#: MiB up to DEFAULT_MAX_MESSAGE_BYTES; block YAML (what kiwipy peers send) costs PyYAML about 1 s and
#: 40 MB per MiB, so 8 MiB of it held a worker for 10-20 s (tests/wire/test_decode_cost.py).
DEFAULT_MAX_YAML_BYTES = defaults.MAX_BLOCK_YAML_BYTES
#: Deepest nesting of containers a message may hold: :data:`process_comms.defaults.MAX_NESTING_DEPTH`.
MAX_NESTING_DEPTH = defaults.MAX_NESTING_DEPTH

# --- the flow-YAML fast path: writing ---
# The YAML codec's writer and fast reader: one-line flow YAML that is JSON plus a few tagged scalars.
#
# We write every message of the protocol's types as flow YAML (``{"intent": "status", "pid": !uuid "…"}``),
# which every YAML peer (plumpy's and AiiDA's loaders included) reads exactly as the block style kiwipy
# writes, and we read it back with the C JSON parser instead of the much slower YAML one. What JSON cannot
# say is written as a tagged double-quoted scalar a YAML peer reads natively, and which :func:`load` turns
# into a marker object before the JSON parser runs:
#
# ======================  ==============================  ==========================================
# value                   written as                      why
# ======================  ==============================  ==========================================
# ``uuid.UUID``           ``!uuid "…"``                   plumpy's tag for pids
# tuple                   ``!!python/tuple [...]``        the task envelope (nested ones too)
# NaN, ±inf               ``!!float ".nan"``              JSON has no NaN
# int over 600 digits     ``!!int "0x…"``                 hex: linear both ways, and not refused by
#                                                         Python's int/str digit limit (3.11+)
# non-str dict key        ``!!int "5": …``, ``!uuid …``   JSON keys are strings
# ======================  ==============================  ==========================================
#
# Strings are JSON-escaped ASCII except characters outside the BMP (written raw, as UTF-8: YAML has no
# surrogate-pair escapes), with ``!`` and DEL escaped so that every ``!`` in our output starts a tag.
# A value marker is a JSON object with the key :data:`_MARK` twice: no dict we encode can hold a key twice,
# so no user value is ever read as one; a typed key becomes a str key behind a random nonce absent from the
# document. :func:`load` checks that it converted exactly as many markers as it substituted tags, or leaves
# the document to the YAML loader. A mapping with a key over 1000 characters (YAML's simple keys stop at
# 1024), and values of other types (bytes, sets, dates), are left to the block-YAML dumper.

#: Returned by :func:`load` when the document is not in the subset: use the YAML loader.
NOT_FLOW: Final = object()

#: Deepest nesting of lists, tuples and dicts written: :data:`~process_comms.defaults.MAX_NESTING_DEPTH`.
MAX_DEPTH = defaults.MAX_NESTING_DEPTH

_MARK = "!pc"
_TUPLE_TAG = "!!python/tuple "
# PyYAML's float resolver (YAML 1.1): a JSON number it would not read as a float stays a string for it
_YAML_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
#: Ints at least this large in magnitude are written in hex: their decimal text may exceed the digit
#: limit of Python's int/str conversion (4300 by default, 640 at the least: sys.set_int_max_str_digits).
_HEX_FROM = 10**600
#: Longest key text written in flow: YAML readers (PyYAML, libyaml) take a simple key of 1024 characters at
#: most, tag included; a mapping with a longer key is written as block YAML, with an explicit "? key".
_MAX_KEY_CHARS = 1000
_CHECK_EVERY = 1 << 16  # output pieces between two checks of the output's size
_OUTSIDE_BMP = re.compile("([\U00010000-\U0010ffff])")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
# a JSON escaped surrogate pair: JSON joins it into one character, YAML reads two; such text is YAML's
_PAIR_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SCALAR_TAG = re.compile(r'(!uuid|!!int|!!float|!!null|!!bool) "([^"\\]*)"(\s*:)?')
_EMPTY_TUPLE = re.compile(r"!!python/tuple \[\s*\]")
_TUPLE_OPEN = "!!python/tuple ["
_TUPLE_MARKER = f'{{"{_MARK}": "tuple", "{_MARK}": ""}}'
_TUPLE_HEAD: Final = object()  # what a tuple marker becomes: the first item of a list that is a tuple
_TAGS = {"!uuid": "uuid", "!!int": "int", "!!float": "float", "!!null": "null", "!!bool": "bool"}
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}


class _Unsupported(Exception):
    """The value is outside the flow subset (bytes, sets, dates, ...): the YAML dumper writes it."""


class TooDeep(Exception):
    """The value nests deeper than :data:`MAX_DEPTH` (or contains itself)."""


class TooLarge(Exception):
    """The value's text grew over the size limit while it was being written."""


class Refused(Exception):
    """A value no receiver could read back as it was (the message says which and why)."""


def _ascii_json(text: str) -> str:
    out = _quote(text)  # ASCII with \uXXXX escapes: identical in JSON and YAML double quotes
    if "!" in out or "\x7f" in out:  # every "!" we write starts a tag; DEL is not printable in YAML
        out = out.replace("!", "\\u0021").replace("\x7f", "\\u007f")
    return out


def _string(text: str) -> str:
    if text.isascii():
        out = _quote(text)
        if "!" in out or "\x7f" in out:  # every "!" we write starts a tag; DEL is not printable in YAML
            out = out.replace("!", "\\u0021").replace("\x7f", "\\u007f")
        return out
    if _SURROGATE.search(text) is not None and _SURROGATE_PAIR.search(text) is not None:
        raise Refused(
            "a str holding a high surrogate followed by a low one (a UTF-16 pair left undecoded): JSON readers"
            " join it into one character, YAML readers keep two; send the character it encodes instead"
        )
    if _OUTSIDE_BMP.search(text) is None:
        return _ascii_json(text)  # lone surrogates as \udXXX: read back alike by JSON and YAML
    # characters outside the BMP raw (UTF-8): json.dumps would write surrogate pairs YAML reads as two
    parts = _OUTSIDE_BMP.split(text)
    return '"' + "".join(p if n % 2 else _ascii_json(p)[1:-1] for n, p in enumerate(parts)) + '"'


def _float(value: float) -> str:
    if value != value:
        return '!!float ".nan"'
    if value in (float("inf"), float("-inf")):
        return '!!float ".inf"' if value > 0 else '!!float "-.inf"'
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"  # YAML 1.1 needs the dot to read 1e-05 as a float
    return text


def _int(value: int) -> str:
    if -_HEX_FROM < value < _HEX_FROM:
        return str(value)
    return f'!!int "{hex(value)}"'


def _key(key: Any) -> str:  # Any: the type() checks below are the fast path, and mypy cannot narrow on them
    kind = type(key)
    if kind is str:
        return _string(key)
    if kind is int:
        text = _int(key)
        return text if text.startswith("!") else f'!!int "{text}"'
    if kind is uuid.UUID:
        return f'!uuid "{key}"'
    if key is None:
        return '!!null ""'
    if kind is bool:
        return '!!bool "true"' if key else '!!bool "false"'
    if kind is float:
        text = _float(key)
        return text if text.startswith("!") else f'!!float "{text}"'
    if isinstance(key, str):
        return _string(str.__str__(key))
    raise _Unsupported


class _Writer:
    __slots__ = ("chars", "counted", "max_chars", "next_check", "out", "unsupported")

    def __init__(self, max_chars: int) -> None:
        self.out: list[str] = []
        self.max_chars = max_chars
        self.next_check = _CHECK_EVERY
        self.counted = 0  # pieces of out already measured
        self.chars = 0
        self.unsupported = False  # a value outside the subset was met (the walk goes on to check depth and size)

    def check_size(self) -> None:
        out = self.out
        self.chars += sum(map(len, out[self.counted :]))
        self.counted = len(out)
        self.next_check = len(out) + _CHECK_EVERY
        if self.chars > self.max_chars:
            raise TooLarge(self.chars)

    def text(self, value: str) -> None:
        """Append a long string and count it at once: a shared one may be written many times."""
        self.out.append(_string(value))
        self.check_size()

    def emit(self, value: Any, depth: int) -> None:
        out = self.out
        if len(out) > self.next_check:
            self.check_size()  # shared references are written out in full: a value may expand a lot
        kind = type(value)
        if kind is str:
            if len(value) <= _CHECK_EVERY:
                out.append(_string(value))
            else:
                self.text(value)
        elif kind is int:
            out.append(str(value) if -_HEX_FROM < value < _HEX_FROM else _int(value))
        elif value is None:
            out.append("null")
        elif kind is bool:
            out.append("true" if value else "false")
        elif kind is float:
            out.append(_float(value))
        elif kind is uuid.UUID:
            out.append(f'!uuid "{value}"')
        elif depth >= MAX_DEPTH and isinstance(value, (dict, list, tuple)):
            raise TooDeep
        elif kind is dict:
            self.mapping(value, depth)
        elif kind is list or kind is tuple:
            self.sequence(value, depth, kind is tuple)
        elif isinstance(value, str):
            self.emit(str.__str__(value), depth)  # a str enum travels as its value
        elif isinstance(value, dict):
            self.mapping(value, depth)
        elif isinstance(value, list):
            self.sequence(value, depth, False)
        else:
            self.unsupported = True  # bytes, a set, a date, ...: the YAML dumper writes the message
            out.append("?")

    def sequence(self, value: list[Any] | tuple[Any, ...], depth: int, is_tuple: bool) -> None:
        out = self.out
        append = out.append
        append(_TUPLE_OPEN if is_tuple else "[")
        emit = self.emit
        first = len(out)
        for item in value:  # the common scalars inline: most long messages are lists of them
            append(", ")
            kind = type(item)
            if kind is int and -_HEX_FROM < item < _HEX_FROM:
                append(str(item))
            elif kind is float:
                append(_float(item))
            elif kind is str and len(item) <= _CHECK_EVERY:
                append(_string(item))
            else:
                emit(item, depth + 1)
        if len(out) > first:
            out[first] = ""
        append("]")

    def mapping(self, value: dict[Any, Any], depth: int) -> None:
        out = self.out
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(", ")
            first = False
            if type(key) is str and len(key) < _MAX_KEY_CHARS:
                out.append(_string(key))
            else:
                try:
                    text = _key(key)
                except _Unsupported:
                    text = "?"
                    self.unsupported = True
                if len(text) > _MAX_KEY_CHARS:  # too long for a YAML simple key: block YAML writes "? key"
                    self.unsupported = True
                out.append(text)
            out.append(": ")
            kind = type(item)  # the common scalars inline, as in sequence()
            if kind is str and len(item) <= _CHECK_EVERY:
                out.append(_string(item))
            elif kind is bool:
                out.append("true" if item else "false")
            elif item is None:
                out.append("null")
            elif kind is int and -_HEX_FROM < item < _HEX_FROM:
                out.append(str(item))
            else:
                self.emit(item, depth + 1)
        out.append("}")


def dump(value: object, max_bytes: int = defaults.MAX_MESSAGE_BYTES) -> bytes | None:
    """``value`` as one line of flow YAML, or None if it holds a type outside the subset.

    Raises :class:`TooLarge` once the text passes ``max_bytes``, :class:`TooDeep` and :class:`Refused`.
    """
    writer = _Writer(max_bytes)
    try:
        writer.emit(value, 0)
    except RecursionError:  # a deep stack at the caller's side: report it as the depth limit
        raise TooDeep from None
    writer.out.append("\n")  # the caller checks the exact size of what is returned
    if writer.unsupported:
        return None
    text = "".join(writer.out)
    return text.encode("ascii") if text.isascii() else text.encode("utf-8")


# --- the flow-YAML fast path: reading (the C JSON parser, once the tags are marker objects) ---


class _NotFlow(Exception):
    pass


def _yaml_int(text: str) -> int:
    """An int as PyYAML reads our ``!!int`` payloads (decimal or 0x hex); anything else is YAML's to read."""
    digits = text[1:] if text[:1] in "+-" else text
    if digits.startswith("0x") and digits[2:] and all(c in "0123456789abcdefABCDEF" for c in digits[2:]):
        number = int(digits[2:], 16)
    elif digits.isdigit() and digits.isascii() and (len(digits) == 1 or digits[0] != "0"):
        number = int(digits)  # ValueError over the int/str digit limit: YAML's loader refuses it too
    else:
        raise _NotFlow
    return -number if text[:1] == "-" else number


def _yaml_float(text: str) -> float:
    if "_" in text or ":" in text:
        raise _NotFlow
    lower = text.lower()
    sign = -1.0 if lower[:1] == "-" else 1.0
    body = lower[1:] if lower[:1] in "+-" else lower
    if body == ".inf":
        return sign * float("inf")
    if body == ".nan":
        return float("nan")
    return sign * float(body)


def _scalar(kind: str, payload: str) -> object:
    if kind == "uuid":
        return uuid.UUID(payload)
    if kind == "int":
        return _yaml_int(payload)
    if kind == "float":
        return _yaml_float(payload)
    if kind == "null":
        return None
    if kind == "bool":
        return _BOOLS[payload.lower()]
    if kind == "tuple":
        return _TUPLE_HEAD
    raise _NotFlow


class _Markers:
    """Turns the marker objects of one document back into values, counting them.

    A value marker is an object with exactly two pairs, both keyed :data:`_MARK` (no dict we encode holds a
    key twice). A typed key becomes a str key made of a random nonce (absent from the document) and an index
    into :attr:`keys`, so that no user key can be taken for one.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.converted = 0
        self.tuples = 0
        self.nonce = ""
        self.keys: list[Any] = []

    def substitute(self, match: re.Match[str]) -> str:
        tag, payload, colon = match.groups()
        if not colon:
            return f'{{"{_MARK}": "{_TAGS[tag]}", "{_MARK}": "{payload}"}}'
        if not self.nonce:
            self.nonce = secrets.token_hex(8)
            while self.nonce in self.text:
                self.nonce = secrets.token_hex(8)
        self.keys.append(_scalar(_TAGS[tag], payload))
        return f'"{self.nonce}{len(self.keys) - 1}":'

    def pairs(self, pairs: list[tuple[str, Any]]) -> object:
        if self.nonce:
            nonce, typed = self.nonce, 0
            for n, (key, value) in enumerate(pairs):
                if key.startswith(nonce):
                    pairs[n] = (self.keys[int(key[len(nonce) :])], value)
                    typed += 1
            self.converted += typed
        if len(pairs) == 2 and pairs[0][0] == _MARK and pairs[1][0] == _MARK:
            kind, payload = pairs[0][1], pairs[1][1]
            if type(kind) is not str or type(payload) is not str:
                raise _NotFlow
            self.converted += 1
            value = _scalar(kind, payload)
            if value is _TUPLE_HEAD:
                self.tuples += 1
            return value
        return dict(pairs)


def _tuples(value: Any, found: list[int]) -> Any:
    """``value`` with every list whose first item is a tuple marker turned into a tuple (in place below)."""
    kind = type(value)
    if kind is list:
        for n, item in enumerate(value):
            if type(item) is list or type(item) is dict:
                value[n] = _tuples(item, found)
        if value and value[0] is _TUPLE_HEAD:
            found[0] += 1
            return tuple(value[1:])
    elif kind is dict:
        for key, item in value.items():
            if type(item) is list or type(item) is dict:
                value[key] = _tuples(item, found)
    return value


def _parse_float(text: str) -> float | str:
    return float(text) if _YAML_FLOAT.match(text) else text


def _reject_constant(_name: str) -> NoReturn:
    raise _NotFlow  # NaN, Infinity: strings to a YAML reader


def load(data: bytes | str) -> Any:
    """Decode a document in the subset with the JSON parser; :data:`NOT_FLOW` for anything else."""
    try:
        text = data.decode("utf-8", "strict") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        return NOT_FLOW
    as_tuple = False
    if text.startswith(_TUPLE_TAG):  # a task envelope: (task, no_reply)
        text, as_tuple = text[len(_TUPLE_TAG) :], True
    if "\\u" in text and _PAIR_ESCAPE.search(text) is not None:
        return NOT_FLOW
    markers: _Markers | None = None
    substituted = 0
    if "!" in text:
        markers = _Markers(text)
        tuples = 0
        if "!!python/tuple" in text:
            text, tuples = _EMPTY_TUPLE.subn(f"[{_TUPLE_MARKER}]", text)
            tuples += text.count(_TUPLE_OPEN)
            text = text.replace(_TUPLE_OPEN, f"[{_TUPLE_MARKER}, ")
        text, scalars = _SCALAR_TAG.subn(markers.substitute, text)
        substituted = tuples + scalars
        if not substituted:
            markers = None
    try:
        value = json.loads(
            text,
            object_pairs_hook=markers.pairs if markers is not None else None,
            parse_float=_parse_float,
            parse_constant=_reject_constant,
        )
        if markers is not None:
            if markers.converted != substituted:  # a tag inside a string, or a marker the sender wrote itself
                return NOT_FLOW
            if markers.tuples:
                found = [0]
                value = _tuples(value, found)
                if found[0] != markers.tuples:  # a tuple marker that was not the head of a list
                    return NOT_FLOW
    except (_NotFlow, ValueError, KeyError, RecursionError):
        return NOT_FLOW
    if as_tuple:
        return tuple(value) if type(value) is list else NOT_FLOW
    return value


# --- block YAML: PyYAML's safe loader and dumper, with plumpy's two tags ---

UUID_TAG = "!uuid"
TUPLE_TAG = "tag:yaml.org,2002:python/tuple"

try:  # libyaml's C loader and dumper when PyYAML was built with it
    from yaml import CSafeDumper as _BaseDumper
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - a PyYAML without libyaml
    from yaml import SafeDumper as _BaseDumper  # type: ignore[assignment]
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


def _reason(exc: BaseException) -> str:
    """``str(exc)``, or its type's name when even that raises: PyYAML's ``RepresenterError`` shows the value, and
    a value whose ``repr`` raises (a set of ints past the digit limit) must still end in an ``EncodeError``."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - the value's own repr may raise anything
        return f"{type(exc).__name__} (its message cannot be shown)"


class _SafeLoader(_BaseLoader):
    """SafeLoader plus the two non-plain tags of the plumpy dialect; registered on this class only."""


#: Values a message may hold once its YAML aliases are expanded: an "alias bomb" of 2 kB expands to
#: gigabytes when it is turned into text (a routing key, a log line), so it is refused when decoded.
MAX_EXPANDED_VALUES = 100_000


class _SelfReference(ValueError):
    """A container holds itself (``a: &a [*a]``): it has no finite expansion and cannot be sent on."""


def _children(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        return itertools.chain.from_iterable(value.items())
    if isinstance(value, (list, tuple)):
        return iter(value)
    return iter(())


def _expanded_size(value: object) -> int:
    """Number of values in ``value`` counting every alias in full (each shared object is measured once).

    Walks with an explicit stack, so neither deep nesting nor a self-reference (an anchor whose alias sits
    inside it, ``a: &a [*a]``) can raise RecursionError; the latter raises :class:`_SelfReference`.
    """
    if not isinstance(value, (dict, list, tuple)):
        return 1
    memo: dict[int, int] = {}
    open_ids = {id(value)}  # containers on the current path: meeting one again is a cycle
    stack: list[tuple[object, Iterator[object], list[int]]] = [(value, _children(value), [1])]
    while True:
        node, items, total = stack[-1]
        for child in items:
            if not isinstance(child, (dict, list, tuple)):
                total[0] += 1
                continue
            known = memo.get(id(child))
            if known is not None:
                total[0] += known
                continue
            if id(child) in open_ids:
                raise _SelfReference
            open_ids.add(id(child))
            stack.append((child, _children(child), [1]))
            break
        else:
            stack.pop()
            open_ids.discard(id(node))
            memo[id(node)] = total[0]
            if not stack:
                return total[0]
            stack[-1][2][0] += total[0]


class _SafeDumper(_BaseDumper):
    """SafeDumper that writes tuples and UUIDs the way plumpy peers expect."""


def _construct_uuid(loader: _SafeLoader, node: yaml.ScalarNode) -> uuid.UUID:
    value = loader.construct_scalar(node)
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise yaml.constructor.ConstructorError(None, None, f"invalid !uuid value {value!r}", node.start_mark) from exc


def _construct_tuple(loader: _SafeLoader, node: yaml.SequenceNode) -> tuple[object, ...]:
    return tuple(loader.construct_sequence(node))


def _represent_uuid(dumper: _SafeDumper, data: uuid.UUID) -> yaml.Node:
    return dumper.represent_scalar(UUID_TAG, str(data))


def _represent_tuple(dumper: _SafeDumper, data: tuple[object, ...]) -> yaml.Node:
    return dumper.represent_sequence(TUPLE_TAG, data)


def _represent_int(dumper: _SafeDumper, data: int) -> yaml.Node:
    # hex past 600 digits, as the flow writer does: decimal text that long may pass Python's int/str limit
    return dumper.represent_scalar("tag:yaml.org,2002:int", str(data) if abs(data) < 10**600 else hex(data))


_SafeLoader.add_constructor(UUID_TAG, _construct_uuid)
_SafeLoader.add_constructor(TUPLE_TAG, _construct_tuple)
_SafeDumper.add_representer(uuid.UUID, _represent_uuid)
_SafeDumper.add_representer(tuple, _represent_tuple)
_SafeDumper.add_representer(int, _represent_int)
# Subclasses of plain containers and scalars (str enums, dict subclasses) travel as their base type.
_SafeDumper.add_multi_representer(dict, lambda d, v: d.represent_dict(dict(v)))
_SafeDumper.add_multi_representer(str, lambda d, v: d.represent_str(str.__str__(v)))
_SafeDumper.add_multi_representer(list, lambda d, v: d.represent_list(list(v)))


# --- the codecs ---


@runtime_checkable
class Codec(Protocol):
    """Turns message bodies into bytes and back; decode never runs code."""

    name: str

    def encode(self, obj: object) -> bytes: ...

    def decode(self, data: bytes | str) -> Any: ...


class _SizeLimited:
    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes

    def _check_size(self, size: int, what: str) -> None:
        if size > self.max_bytes:
            err = EncodeError if what == "encode" else DecodeError
            raise err(f"message of {size} bytes exceeds the limit of {self.max_bytes} bytes")


class YamlCodec(_SizeLimited):
    """The YAML dialect of plumpy + kiwipy, decoded with a safe loader (C-accelerated when present).

    ``max_bytes`` bounds every message; ``max_yaml_bytes`` bounds those that need the full YAML loader
    (see :data:`DEFAULT_MAX_YAML_BYTES`).
    """

    name = "yaml"

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_yaml_bytes: int = DEFAULT_MAX_YAML_BYTES
    ) -> None:
        super().__init__(max_bytes)
        self.max_yaml_bytes = min(max_yaml_bytes, max_bytes)

    def encode(self, obj: object) -> bytes:
        try:
            fast = dump(obj, self.max_bytes)  # one line of flow YAML: JSON plus a few tags
        except TooLarge:
            raise EncodeError(
                f"message of over {self.max_bytes} bytes exceeds the limit of {self.max_bytes} bytes"
                " (process_comms.defaults.MAX_MESSAGE_BYTES): nothing was sent"
            ) from None
        except TooDeep:
            try:
                _expanded_size(obj)
            except _SelfReference:
                raise EncodeError("cannot encode a value that contains itself (a list or dict inside itself)") from None
            raise EncodeError(
                f"cannot encode a value nested more than {MAX_NESTING_DEPTH} levels deep"
                " (process_comms.defaults.MAX_NESTING_DEPTH)"
            ) from None
        except Refused as exc:
            raise EncodeError(f"cannot encode {_reason(exc)}") from None
        if fast is not None:
            self._check_size(len(fast), "encode")
            return fast
        return self._encode_block(obj)

    def _encode_block(self, obj: object) -> bytes:
        """Block YAML for a value holding bytes, sets or dates: refused where the decoder would refuse it."""
        try:
            data: bytes = yaml.dump(obj, Dumper=_SafeDumper, encoding="utf-8", default_flow_style=False)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            raise EncodeError(f"cannot encode {type(obj).__name__} value for the wire: {_reason(exc)}") from None
        except RecursionError:
            raise EncodeError("cannot encode a value nested this deeply") from None
        if b"&" in data:  # the dumper wrote anchors: measure them as the decoder will
            try:
                expanded = _expanded_size(obj)
            except _SelfReference:
                raise EncodeError("cannot encode a value that contains itself (a list or dict inside itself)") from None
            if expanded > MAX_EXPANDED_VALUES:
                raise EncodeError(f"cannot encode a value whose shared parts expand to over {MAX_EXPANDED_VALUES}")
        if len(data) > self.max_yaml_bytes:
            raise EncodeError(
                f"message of {len(data)} bytes exceeds the limit of {self.max_yaml_bytes} bytes for block YAML"
                " (process_comms.defaults.MAX_BLOCK_YAML_BYTES): values holding bytes, sets or dates travel as"
                " block YAML; send them as str, list or float instead"
            )
        self._check_size(len(data), "encode")
        return data

    def decode(self, data: bytes | str) -> Any:
        if not isinstance(data, (bytes, bytearray, str)):
            raise DecodeError(f"message body must be bytes or str, not {type(data).__name__}")
        if isinstance(data, bytearray):
            data = bytes(data)
        size = len(data.encode() if isinstance(data, str) else data)
        self._check_size(size, "decode")
        value = load(data)
        if value is not NOT_FLOW:
            return value
        if size > self.max_yaml_bytes:
            raise DecodeError(
                f"refused to decode message: {size} bytes of block YAML exceed the limit of {self.max_yaml_bytes}"
                " bytes for the full YAML loader (larger messages must be flow YAML that is also JSON, as ours are)"
            )
        try:
            value = yaml.load(data, Loader=_SafeLoader)
        except yaml.constructor.ConstructorError as exc:
            raise DecodeError(f"refused to decode message: {exc.problem or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, LookupError, AttributeError) as exc:
            raise DecodeError(f"malformed YAML message: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        except RecursionError:
            raise DecodeError("message nests too deeply") from None
        # anchors are rare in messages: only a document that defines one can expand, so only it is measured
        if b"&" in data if isinstance(data, bytes) else "&" in data:
            try:
                size = _expanded_size(value)
            except _SelfReference:
                raise DecodeError(
                    "refused to decode message: a YAML alias refers to its own anchor (a value that contains itself)"
                ) from None
            if size > MAX_EXPANDED_VALUES:
                raise DecodeError(f"refused to decode message: its aliases expand to over {MAX_EXPANDED_VALUES} values")
        return value


def _json_default(obj: object) -> object:
    if isinstance(obj, uuid.UUID):
        return {"__uuid__": str(obj)}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


#: Ints at least this large in magnitude travel in JSON as ``{"__int__": "0x…"}``: their decimal text may pass
#: Python's int/str digit limit (4300 digits by default; 640 at the least), which json refuses both ways.
_JSON_HEX_FROM = 10**600


def _hex_big_ints(value: object, depth: int = 0) -> object:
    """``value`` with every int over :data:`_JSON_HEX_FROM` replaced by its ``{"__int__": hex}`` form."""
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return {"__int__": hex(value)} if not -_JSON_HEX_FROM < value < _JSON_HEX_FROM else value
    if depth > 1000:
        raise RecursionError
    if isinstance(value, dict):
        return {k: _hex_big_ints(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hex_big_ints(v, depth + 1) for v in value]
    return value


def _json_object_hook(obj: dict[str, object]) -> object:
    if len(obj) == 1 and "__uuid__" in obj:
        try:
            text = obj["__uuid__"]
            if not isinstance(text, str):
                raise TypeError(f"a uuid is a string, not {type(text).__name__}")
            return uuid.UUID(text)
        except (ValueError, TypeError, AttributeError) as exc:
            raise DecodeError(f"invalid uuid value {obj['__uuid__']!r}") from exc
    if len(obj) == 1 and "__int__" in obj:
        text = obj["__int__"]
        negative = isinstance(text, str) and text.startswith("-")
        digits = text[1:] if negative and isinstance(text, str) else text
        if not isinstance(digits, str) or not digits.startswith("0x") or not digits[2:].isalnum():
            raise DecodeError(f"invalid int value {str(text)[:40]!r}")
        try:
            number = int(digits[2:], 16)
        except ValueError as exc:
            raise DecodeError(f"invalid int value {str(text)[:40]!r}") from exc
        return -number if negative else number
    return obj


class JsonCodec(_SizeLimited):
    """JSON bodies (tuples become lists, UUIDs become ``{"__uuid__": ...}``, ints over 600 digits
    ``{"__int__": "0x…"}``; NaN and infinities are refused); faster, not plumpy-compatible."""

    name = "json"

    def encode(self, obj: object) -> bytes:
        try:
            try:
                text = json.dumps(obj, default=_json_default, separators=(",", ":"), allow_nan=False)
            except ValueError:  # NaN, or an int past the digit limit: the latter travels in hex
                text = json.dumps(_hex_big_ints(obj), default=_json_default, separators=(",", ":"), allow_nan=False)
            data = text.encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot encode value for the wire: {_reason(exc)}") from None
        except RecursionError:
            raise EncodeError("cannot encode a value nested this deeply") from None
        self._check_size(len(data), "encode")
        return data

    def decode(self, data: bytes | str) -> Any:
        if not isinstance(data, (bytes, bytearray, str)):
            raise DecodeError(f"message body must be bytes or str, not {type(data).__name__}")
        self._check_size(len(data), "decode")
        try:
            return json.loads(data, object_hook=_json_object_hook)
        except DecodeError:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise DecodeError(f"malformed JSON message: {exc}") from None


class FunctionCodec(_SizeLimited):
    """kiwipy's ``encoder``/``decoder`` pair as a codec (AiiDA passes YAML functions of its own).

    What the functions accept and run is theirs: a decoder with an unsafe YAML loader runs what a message
    names (plumpy/AiiDA's choice; ours never does). Failures become :class:`EncodeError`/:class:`DecodeError`,
    a ``str`` from the encoder is sent as UTF-8, and both directions keep the size limit.
    """

    name = "functions"

    def __init__(
        self,
        encoder: Callable[[object], bytes | str],
        decoder: Callable[[bytes], Any],
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(max_bytes)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, obj: object) -> bytes:
        try:
            data = self.encoder(obj)
        except Exception as exc:
            raise EncodeError(f"the encoder failed on a {type(obj).__name__} value: {_reason(exc)}") from exc
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray)):
            raise EncodeError(f"the encoder must return bytes or str, not {type(data).__name__}")
        self._check_size(len(data), "encode")
        return bytes(data)

    def decode(self, data: bytes | str) -> Any:
        if not isinstance(data, (bytes, bytearray, str)):
            raise DecodeError(f"message body must be bytes or str, not {type(data).__name__}")
        self._check_size(len(data), "decode")
        try:
            return self.decoder(data)  # type: ignore[arg-type]  # kiwipy hands decoders the body as it came
        except Exception as exc:
            raise DecodeError(f"the decoder failed: {type(exc).__name__}: {_reason(exc)}") from exc


def get_codec(codec: str | Codec | None = None, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Codec:
    """Return a codec by name (``"yaml"``, the default, or ``"json"``) or pass one through."""
    if codec is None or codec == "yaml":
        return YamlCodec(max_bytes)
    if codec == "json":
        return JsonCodec(max_bytes)
    if isinstance(codec, str):
        raise ValueError(f"unknown codec {codec!r}: use 'yaml' or 'json'")
    return codec
