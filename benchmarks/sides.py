"""The client sides behind one small interface: process_comms, plumpy, and the raw aio-pika floor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from typing import Any

import aio_pika
import plumpy
import yaml
from kiwipy.rmq import RmqThreadCommunicator

import process_comms
from benchmarks import bench_procs
from benchmarks.common import (
    ECHO_KEY,
    PC,
    PC_LOOP,
    PL,
    RAW,
    RAW_T,
)
from benchmarks.workers import close_bounded


class PcSide:
    """process_comms: thread controller and asyncio controller on one ``process_comms.connect``."""

    name = PC
    worker_pid: int | None = None

    def __init__(self, url: str, exchange_names: dict[str, str], codec: str, tick: float) -> None:
        self.exchange_names = exchange_names
        self.comm = process_comms.connect(url, testing_mode=True, codec=codec, **exchange_names)
        self.ctl = process_comms.RemoteProcessThreadController(self.comm)
        self.actl = process_comms.RemoteProcessController(self.comm)
        self.waiter_kwargs = {"inputs": {"tick": tick}}

    # thread facade: every call returns a flat future
    def status(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.get_status(pid, timeout=timeout)

    def pause(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.pause_process(pid, timeout=timeout)

    def play(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.play_process(pid, timeout=timeout)

    def kill(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.kill_process(pid, timeout=timeout)

    def launch_trivial(self, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.launch_process(bench_procs.PcTrivial, nowait=False, timeout=timeout)

    def launch_waiter(self, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.launch_process(
            bench_procs.PcWaiter, init_kwargs=self.waiter_kwargs, nowait=True, timeout=timeout
        )

    def flat(self, fut: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
        return fut

    def wait(self, fut: concurrent.futures.Future[Any], timeout: float) -> Any:
        return fut.result(timeout)

    # asyncio controller
    async def a_status(self, pid: Any, timeout: float) -> Any:
        return await self.actl.get_status(pid, timeout=timeout)

    async def a_pause(self, pid: Any, timeout: float) -> Any:
        return await self.actl.pause_process(pid, timeout=timeout)

    async def a_play(self, pid: Any, timeout: float) -> Any:
        return await self.actl.play_process(pid, timeout=timeout)

    async def a_launch_trivial(self, timeout: float) -> Any:
        return await self.actl.launch_process(bench_procs.PcTrivial, nowait=False, timeout=timeout)

    def close(self) -> None:
        close_bounded(self.comm.close)


class PlumpySide:
    """plumpy 0.26: its controllers on a ``kiwipy.rmq.RmqThreadCommunicator`` (as AiiDA's client side)."""

    name = PL
    worker_pid: int | None = None

    def __init__(self, url: str, exchange_names: dict[str, str], asyncio_debug: bool) -> None:
        self.comm = RmqThreadCommunicator.connect(connection_params={"url": url}, testing_mode=True, **exchange_names)
        if not asyncio_debug:
            self.comm.loop().set_debug(False)
        self.ctl = plumpy.RemoteProcessThreadController(self.comm)
        self.actl = plumpy.RemoteProcessController(self.comm)

    # thread controller: the calls block until the broker confirms the publish, futures nest
    def status(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.get_status(pid)

    def pause(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.pause_process(pid)

    def play(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.play_process(pid)

    def kill(self, pid: Any, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.kill_process(pid)

    def launch_trivial(self, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.launch_process(bench_procs.PlumpyTrivial, nowait=False)

    def launch_waiter(self, timeout: float) -> concurrent.futures.Future[Any]:
        return self.ctl.launch_process(bench_procs.PlumpyWaiter, nowait=True)

    def flat(self, fut: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
        return plumpy.futures.unwrap_kiwi_future(fut)

    def wait(self, fut: concurrent.futures.Future[Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        value: Any = fut
        while isinstance(value, concurrent.futures.Future):
            value = value.result(max(0.0, deadline - time.monotonic()))
        return value

    # asyncio controller: plumpy awaits a fixed number of levels; unwrap the rest (pain-points B3)
    @staticmethod
    async def _flatten(coro: Any, timeout: float) -> Any:
        async def go() -> Any:
            value = await coro
            while isinstance(value, concurrent.futures.Future):
                value = await asyncio.wrap_future(value)
            return value

        return await asyncio.wait_for(go(), timeout)

    async def a_status(self, pid: Any, timeout: float) -> Any:
        return await self._flatten(self.actl.get_status(pid), timeout)

    async def a_pause(self, pid: Any, timeout: float) -> Any:
        return await self._flatten(self.actl.pause_process(pid), timeout)

    async def a_play(self, pid: Any, timeout: float) -> Any:
        return await self._flatten(self.actl.play_process(pid), timeout)

    async def a_launch_trivial(self, timeout: float) -> Any:
        return await self._flatten(self.actl.launch_process(bench_procs.PlumpyTrivial, nowait=False), timeout)

    def close(self) -> None:
        close_bounded(self.comm.close)


class RawSide:
    """The floor inside workload a: bare aio-pika request/reply to ``worker_raw.py``, with publisher
    confirms and ``mandatory`` like every RPC of both libraries, on a private event loop driven from the
    calling thread (no thread hop, no codec, no dispatch). Interleaved with the libraries in a's ABBA
    rounds, so that the p50 ratio compares calls made under the same load."""

    name = RAW

    def __init__(
        self, url: str, exchange_name: str, worker_pid: int | None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.worker_pid = worker_pid
        self.body = yaml.dump({"intent": "status", "message": None}).encode()
        self._owns_loop = loop is None
        self.loop = loop or asyncio.new_event_loop()
        self.waiters: dict[str, asyncio.Future[bytes]] = {}
        self.connection: Any = None
        try:
            self._run(self._open(url, exchange_name), 15)
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Any, timeout: float) -> Any:
        """Drive the private loop from the calling thread until ``coro`` is done."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def _open(self, url: str, exchange_name: str) -> None:
        self.connection = await aio_pika.connect(url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        self.reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.bind(self.exchange, routing_key=self.reply_queue.name)
        await self.reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        fut = self.waiters.pop(message.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(message.body)

    async def _call(self) -> bytes:
        cid = str(uuid.uuid4())
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.waiters[cid] = fut
        try:
            await self.exchange.publish(
                aio_pika.Message(self.body, correlation_id=cid, reply_to=self.reply_queue.name),
                routing_key=ECHO_KEY,
                mandatory=True,
            )
            return await fut
        finally:
            self.waiters.pop(cid, None)

    def call(self, timeout: float) -> bytes:
        """One request/reply, blocking the calling thread until the reply."""
        result: bytes = self._run(self._call(), timeout)
        return result

    def close(self) -> None:
        if self.connection is not None:
            try:
                self._run(self.connection.close(), 10)
            except Exception:  # noqa: BLE001 - best effort at the end of a run
                pass
            self.connection = None
        if self._owns_loop:
            self.loop.close()


class RawThreadSide(RawSide):
    """The floor for a blocking caller: the same bare aio-pika client on an event loop in a background
    thread, called with ``run_coroutine_threadsafe(...).result()`` - the thread hop that any blocking
    facade over asyncio pays (a notebook's main thread already runs a loop; a threaded service shares one)."""

    name = RAW_T

    def __init__(self, url: str, exchange_name: str, worker_pid: int | None) -> None:
        thread_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=thread_loop.run_forever, name="raw-floor-loop", daemon=True)
        self.thread.start()
        super().__init__(url, exchange_name, worker_pid, loop=thread_loop)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


class PcLoopSide:
    """process_comms' asyncio controller on an ``RmqCommunicator`` that runs on the caller's own loop (no
    loop thread), driven like :class:`RawSide`: the asyncio user's path, with no thread hop."""

    name = PC_LOOP

    def __init__(self, url: str, exchange_names: dict[str, str], codec: str, worker_pid: int | None) -> None:
        self.worker_pid = worker_pid
        self.loop = asyncio.new_event_loop()
        self.comm = process_comms.RmqCommunicator(url, codec=codec, testing_mode=True, **exchange_names)
        self.actl = process_comms.RemoteProcessController(self.comm)
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.comm.connect(), 15))
        except BaseException:
            self.close()
            raise

    def status(self, pid: Any, timeout: float) -> Any:
        return self.loop.run_until_complete(self.actl.get_status(pid, timeout=timeout))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.comm.close(), 10))
        except Exception:  # noqa: BLE001 - best effort at the end of a run
            pass
        self.loop.close()


Side = Any  # PcSide | PlumpySide | RawSide | PcLoopSide
