"""Message codecs: the safe YAML dialect plumpy peers speak (default) and a JSON option.

Messages are data, never code: the YAML decoder knows plain types, ``!!python/tuple`` and ``!uuid``
only, and refuses every other tag (``!!python/object/apply``, ``!!python/name``, AiiDA tags, ...).

The codecs are symmetric: whatever they encode under :data:`DEFAULT_MAX_MESSAGE_BYTES`, they decode back
(tests/wire/test_codec_symmetry.py); a value over it, nested deeper than :data:`MAX_NESTING_DEPTH` or that no
receiver could read back as it was raises :class:`~process_comms.errors.EncodeError` before anything is sent.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import yaml

from .. import defaults
from ..errors import DecodeError, EncodeError
from . import _flowyaml as flowyaml

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

#: The one size limit of a message body: :data:`process_comms.defaults.MAX_MESSAGE_BYTES` (8 MiB).
DEFAULT_MAX_MESSAGE_BYTES = defaults.MAX_MESSAGE_BYTES
#: Largest block-YAML body decoded (1 MiB): :data:`process_comms.defaults.MAX_BLOCK_YAML_BYTES`. Our
#: messages are flow YAML that is also JSON plus a few tags, read by a JSON parser at about 10-40 ms per
#: MiB up to DEFAULT_MAX_MESSAGE_BYTES; block YAML (what kiwipy peers send) costs PyYAML about 1 s and
#: 40 MB per MiB, so 8 MiB of it held a worker for 10-20 s (tests/wire/test_decode_cost.py).
DEFAULT_MAX_YAML_BYTES = defaults.MAX_BLOCK_YAML_BYTES
#: Deepest nesting of containers a message may hold: :data:`process_comms.defaults.MAX_NESTING_DEPTH`.
MAX_NESTING_DEPTH = defaults.MAX_NESTING_DEPTH

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
            fast = flowyaml.dump(obj, self.max_bytes)  # one line of flow YAML: JSON plus a few tags
        except flowyaml.TooLarge:
            raise EncodeError(
                f"message of over {self.max_bytes} bytes exceeds the limit of {self.max_bytes} bytes"
                " (process_comms.defaults.MAX_MESSAGE_BYTES): nothing was sent"
            ) from None
        except flowyaml.TooDeep:
            try:
                _expanded_size(obj)
            except _SelfReference:
                raise EncodeError("cannot encode a value that contains itself (a list or dict inside itself)") from None
            raise EncodeError(
                f"cannot encode a value nested more than {MAX_NESTING_DEPTH} levels deep"
                " (process_comms.defaults.MAX_NESTING_DEPTH)"
            ) from None
        except flowyaml.Refused as exc:
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
        value = flowyaml.load(data)
        if value is not flowyaml.NOT_FLOW:
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
