"""The fast path of the YAML codec: one-line flow YAML that is also (nearly) JSON.

We emit the messages we can as JSON-shaped flow YAML (``{"intent": "status", "pid": !uuid "…"}``),
which every YAML peer (plumpy's loaders included) reads exactly as the block style kiwipy writes, and
we read such documents with the C JSON parser instead of the much slower YAML one. Anything outside
this subset (other types, non-BMP text, NaN, anchors, other peers' block YAML) takes the full YAML path.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

__all__ = ["dump", "load", "NOT_FLOW"]

#: Returned by :func:`load` when the document is not in the subset: use the YAML loader.
NOT_FLOW: Any = object()

_UUID_KEY = "__process_comms_uuid__"
_TUPLE_TAG = "!!python/tuple "
_UUID_TAGGED = re.compile(r'!uuid "([0-9a-fA-F-]{32,36})"')
# PyYAML's float resolver (YAML 1.1): a JSON number it would not read as a float stays a string for it
_YAML_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
    r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_MAX_DEPTH = 100
#: Values written on the fast path at most: shared references are written out in full here (the YAML
#: dumper writes anchors instead), so a value that would expand is left to the YAML dumper.
_MAX_VALUES = 50_000


class _Unsupported(Exception):
    """The value is outside the flow subset."""


def _string(text: str) -> str:
    if not text.isascii() and any(ord(c) > 0xFFFF or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise _Unsupported  # YAML has no surrogate pairs: let the YAML dumper write it
    return json.dumps(text)  # ASCII with \uXXXX escapes: identical in JSON and YAML double quotes


def _float(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise _Unsupported
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"  # YAML 1.1 needs the dot to read 1e-05 as a float
    return text


def _emit(value: Any, out: list[str], depth: int) -> None:
    if len(out) > 4 * _MAX_VALUES:
        raise _Unsupported
    kind = type(value)
    if value is None:
        out.append("null")
    elif kind is bool:
        out.append("true" if value else "false")
    elif kind is int:
        out.append(str(value))
    elif kind is str:
        out.append(_string(value))
    elif kind is float:
        out.append(_float(value))
    elif kind is uuid.UUID:
        out.append(f'!uuid "{value}"')
    elif depth > _MAX_DEPTH:
        raise _Unsupported
    elif kind is dict:
        out.append("{")
        for n, (key, item) in enumerate(value.items()):
            if type(key) is not str:
                raise _Unsupported
            out.append(", " if n else "")
            out.append(_string(key))
            out.append(": ")
            _emit(item, out, depth + 1)
        out.append("}")
    elif kind is list or kind is tuple:
        out.append(_TUPLE_TAG + "[" if kind is tuple else "[")
        for n, item in enumerate(value):
            if n:
                out.append(", ")
            _emit(item, out, depth + 1)
        out.append("]")
    else:
        raise _Unsupported


def dump(value: Any) -> bytes | None:
    """``value`` as one line of flow YAML, or None if it is outside the subset."""
    out: list[str] = []
    try:
        _emit(value, out, 0)
    except (_Unsupported, ValueError):  # ValueError: an int too long for str()
        return None
    out.append("\n")
    return "".join(out).encode("ascii")


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _UUID_KEY in obj:
        return uuid.UUID(obj[_UUID_KEY])
    return obj


def _parse_float(text: str) -> Any:
    return float(text) if _YAML_FLOAT.match(text) else text


def _reject_constant(_name: str) -> Any:
    raise ValueError("not in the flow subset")


def load(data: bytes | str) -> Any:
    """Decode a document in the subset with the JSON parser; :data:`NOT_FLOW` for anything else."""
    try:
        text = data.decode("utf-8", "strict") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        return NOT_FLOW
    as_tuple = False
    if text.startswith(_TUPLE_TAG) and text.count("!!") == 1:  # a task envelope: (task, no_reply)
        text, as_tuple = text[len(_TUPLE_TAG) :], True
    start = text.lstrip()[:1]
    if start not in ("{", "[") or "!!" in text:
        return NOT_FLOW
    if "!uuid" in text:
        text = _UUID_TAGGED.sub(rf'{{"{_UUID_KEY}": "\1"}}', text)
    try:
        value = json.loads(text, object_hook=_object_hook, parse_float=_parse_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return NOT_FLOW
    if as_tuple:
        return tuple(value) if isinstance(value, list) else NOT_FLOW
    return value
