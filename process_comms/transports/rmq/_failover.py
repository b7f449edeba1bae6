"""Several broker addresses: connect to the first that answers, move to the next when the connection is lost.

aio-pika's robust connection reconnects to one URL and restores every channel, queue, binding and
consumer on the new connection (``aio_pika.robust_connection.RobustConnection._on_connected``). Each
reconnection attempt reads the connection's ``url`` attribute, so failing over is changing that
attribute while the connection is down: the next attempt goes to the next node and the restore
re-creates our topology there (on a cluster, the same queues).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence

import aio_pika
import aio_pika.abc
import yarl

from ..._compat import TIMEOUT_ERRORS
from ...urls import mask_url

__all__ = ["FailoverWatch", "connect_first"]

LOGGER = logging.getLogger(__name__)


async def connect_first(
    urls: Sequence[str],
    make_url: Callable[[str], yarl.URL],
    timeout: float,
    *,
    reconnect_interval: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[aio_pika.abc.AbstractRobustConnection, int]:
    """A robust connection to the first of ``urls`` that answers, and its index; raise the last error if none.

    Each attempt is bounded by ``timeout`` seconds; the errors of the others are logged at WARNING.
    """
    last: BaseException | None = None
    for index, url in enumerate(urls):
        try:
            connection = await asyncio.wait_for(
                aio_pika.connect_robust(
                    make_url(url),
                    timeout=timeout,
                    reconnect_interval=reconnect_interval,
                    ssl_context=ssl_context,
                ),
                timeout + 1,
            )
        except Exception as exc:  # noqa: BLE001 - try the next address; the caller describes the last failure
            last = exc
            if len(urls) > 1:
                LOGGER.warning(
                    "broker %s did not answer (%s: %s); trying the next", mask_url(url), type(exc).__name__, exc
                )
            continue
        return connection, index
    assert last is not None
    raise last


class FailoverWatch:
    """While the connection is down, point its next reconnection attempt at the next address, in turn."""

    def __init__(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        urls: Sequence[str],
        current: int,
        make_url: Callable[[str], yarl.URL],
        interval: float,
        on_change: Callable[[str], None],
    ) -> None:
        self._connection = connection
        self._urls = list(urls)
        self._current = current
        self._make_url = make_url
        self._interval = interval
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (only worth it with more than one address)."""
        if len(self._urls) > 1 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """Stop watching; idempotent."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        connected = self._connection.connected
        while True:
            await self._wait_for(lambda: not connected.is_set())
            # the connection is down: aio-pika's next attempt comes after its reconnect interval
            while not connected.is_set():
                self._current = (self._current + 1) % len(self._urls)
                url = self._urls[self._current]
                # the attribute each reconnection attempt reads (aio_pika.connection.Connection.connect)
                self._connection.url = self._make_url(url)  # type: ignore[attr-defined]
                LOGGER.warning("lost the broker connection: the next attempt goes to %s", mask_url(url))
                self._on_change(url)
                try:
                    await asyncio.wait_for(connected.wait(), self._interval)
                except TIMEOUT_ERRORS:  # asyncio.wait_for's, which before 3.11 is not the builtin
                    continue

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        # aio-pika offers an event for "connected" but none for "lost": the close callback sets ours
        lost = asyncio.Event()

        def on_close(*_args: object) -> None:
            lost.set()

        self._connection.close_callbacks.add(on_close)
        try:
            if not condition():
                await lost.wait()
        finally:
            self._connection.close_callbacks.discard(on_close)
