"""A request's JSON body, bounded: read at most :data:`MAX_BODY_BYTES` (the declared length is checked before any
byte is read; a chunked body stops being read at the limit) and nested at most :data:`MAX_BODY_DEPTH` deep (checked
before parsing: ``json.loads`` of a deeply nested text raises ``RecursionError``). Either is a ``BadRequest`` (400).
"""

from __future__ import annotations

import json

from starlette.requests import Request

from ..errors import ProcessCommsError

__all__ = ["MAX_BODY_BYTES", "MAX_BODY_DEPTH", "BadRequest", "json_depth", "read_json_body"]

#: Largest body an action may carry, in bytes (``{"message": ..., "force": ...}`` needs far less).
MAX_BODY_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects a body may have (an action's body is one flat object).
MAX_BODY_DEPTH = 16


class BadRequest(ProcessCommsError, ValueError):
    """A request the API cannot take (a bad query parameter, a malformed, too large or too deep body)."""


def json_depth(raw: bytes, limit: int) -> int:
    """How deep ``raw``'s arrays and objects nest (brackets inside strings do not count); stops counting past
    ``limit`` (returns ``limit + 1``)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


async def read_json_body(request: Request) -> dict[str, object]:
    """The body as a JSON object (``{}`` when empty), or ``BadRequest`` saying what is wrong with it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(f"bad Content-Length {declared!r}")
        if int(declared) > MAX_BODY_BYTES:
            raise BadRequest(f"the body is {int(declared)} bytes: at most {MAX_BODY_BYTES} are taken")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:  # a chunked body declares no length: stop reading at the limit
            raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes: at most {MAX_BODY_BYTES} are taken")
    if not raw.strip():
        return {}
    if json_depth(bytes(raw), MAX_BODY_DEPTH) > MAX_BODY_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_BODY_DEPTH} levels")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
