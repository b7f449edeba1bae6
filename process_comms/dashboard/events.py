"""Live events for the page: ``state_changed`` broadcasts fanned out to every open server-sent-events stream.

One broadcast subscriber (filtered on ``state_changed.*``, as ``process-comms watch`` does) feeds a bounded
queue per stream; a stream that falls behind loses its oldest events and is told so (``lagged``), so a slow
browser never holds memory or the communicator's loop. See https://html.spec.whatwg.org/multipage/server-sent-events.html
for the format.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ..errors import ProcessCommsError
from ..transports.base import AsyncCommunicator, BroadcastFilter
from ..wire.messages import state_transition

__all__ = ["KEEPALIVE_SECONDS", "MAX_QUEUED", "EventHub", "sse"]

#: Events a stream may have waiting before its oldest are dropped.
MAX_QUEUED = 2000
#: Seconds between keep-alive comments on an idle stream (proxies close silent connections).
KEEPALIVE_SECONDS = 15.0

Event = dict[str, object]


def sse(event: str, data: object) -> str:
    """One server-sent event: ``event: NAME`` and its JSON ``data`` line."""
    return f"event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


class EventHub:
    """Subscribes once to the ``state_changed`` broadcasts and hands each event to every open stream."""

    def __init__(self, on_state: Callable[[str, str], None] | None = None, max_queued: int = MAX_QUEUED) -> None:
        """``on_state(from, to)`` is called for each transition (the metrics count them)."""
        self._on_state_seen = on_state
        self._max_queued = max_queued
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self._core: AsyncCommunicator | None = None
        self._identifier: object = None
        self._closed = False

    @property
    def streams(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    async def start(self, core: AsyncCommunicator) -> None:
        """Subscribe to the broadcasts of ``core`` (called on its loop)."""
        self._core = core
        listener = BroadcastFilter(self._on_state, subject="state_changed.*")
        self._identifier = await core.add_broadcast_subscriber(listener)

    def _on_state(self, _comm: object, _body: object, sender: object, subject: object, _cid: object) -> None:
        transition = state_transition(subject)
        if transition is None or sender is None:
            return
        before, after = transition
        if self._on_state_seen is not None:
            self._on_state_seen(before, after)
        self.publish({"type": "state", "pid": str(sender), "from": before, "to": after, "time": time.time()})

    def publish(self, event: Event) -> None:
        """Queue ``event`` on every open stream (dropping a stream's oldest when it is full)."""
        for queue in self._streams:
            if queue.full():
                queue.get_nowait()
                queue.put_nowait({"type": "lagged"})
                if queue.full():
                    queue.get_nowait()
            queue.put_nowait(event)

    async def stream(self, is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
        """The text of one SSE stream: a ``hello``, then events as they come, until closed or disconnected."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._max_queued)
        self._streams.add(queue)
        try:
            yield sse("hello", {"time": time.time()})
            while not self._closed:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    if await is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                yield sse(str(event.get("type", "message")), event)
        finally:
            self._streams.discard(queue)

    def end_streams(self) -> None:
        """End every open stream now (a server shutting down must not wait for browsers to leave)."""
        self._closed = True
        for queue in self._streams:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def close(self) -> None:
        """End the streams and unsubscribe; idempotent."""
        self.end_streams()
        core, self._core = self._core, None
        if core is not None and self._identifier is not None:
            try:
                await core.remove_broadcast_subscriber(self._identifier)
            except ProcessCommsError:  # the communicator may already be closed: nothing left to undo
                pass
