"""Workloads g and g.l: the raw aio-pika floors, their servers in their own OS processes.

g: a request/reply echo (``worker_raw.py``), 2 messages an op. g.l: launch-shaped (``worker_raw_launch.py``),
the messages one launch of a plumpy-compatible process passes, with no codec, no dispatch and no process, one
launch at a time (``g.l.seq``, row c's shape) and issued then awaited (``g.l.pipe``, row d's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import yaml

from benchmarks.common import (
    ECHO_KEY,
    LAUNCH_FLOOR,
    LAUNCH_FLOOR_SEQ,
    RAW,
    short_error,
)
from benchmarks.measure import (
    CpuMeter,
    LagMonitor,
    Result,
    stop_monitor,
)


async def raw_floor(
    url: str, exchange_name: str, n_seq: int, n_pipe: int, T: float, BT: float, worker_pid: int | None
) -> list[Result]:
    """Request/reply with bare aio-pika: one at a time and pipelined, with and without publisher confirms."""
    body = yaml.dump({"intent": "status", "message": None}).encode()
    results: list[Result] = []
    connection = await asyncio.wait_for(aio_pika.connect(url), 15)
    try:
        for confirms in (True, False):
            channel = await connection.channel(publisher_confirms=confirms)
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
            reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await reply_queue.bind(exchange, routing_key=reply_queue.name)
            waiters: dict[str, asyncio.Future[bytes]] = {}

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage, w: Any = waiters) -> None:
                fut = w.pop(message.correlation_id or "", None)
                if fut is not None and not fut.done():
                    fut.set_result(message.body)

            await reply_queue.consume(on_reply, no_ack=True)

            async def call(ex: Any = exchange, rq: Any = reply_queue, w: Any = waiters) -> bytes:
                cid = str(uuid.uuid4())
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                w[cid] = fut
                try:
                    await ex.publish(
                        aio_pika.Message(body, correlation_id=cid, reply_to=rq.name),
                        routing_key=ECHO_KEY,
                        mandatory=True,
                    )
                    return await asyncio.wait_for(fut, BT)
                finally:
                    w.pop(cid, None)

            for _ in range(20):  # warm-up
                await asyncio.wait_for(call(), T)
            label = "+confirms" if confirms else " no confirms"
            # one at a time
            results.append(await _one_at_a_time(Result(f"g.seq{label}", RAW, n_seq), worker_pid, call, n_seq, T))
            # pipelined
            res = Result(f"g.pipe{label}", RAW, n_pipe)

            async def timed() -> float | None:
                t0 = time.perf_counter()
                try:
                    await call()
                except Exception:  # noqa: BLE001
                    return None
                return time.perf_counter() - t0

            results.append(await _gathered(res, worker_pid, timed, n_pipe, BT))
            await channel.close()
    finally:
        await asyncio.wait_for(connection.close(), 10)
    return results


#: The task of row d as our controller sends it (``launch_process(PcTrivial, nowait=False)``, 181 bytes).
LAUNCH_TASK_BODY = (
    b'!!python/tuple [{"task": "launch", "args": {"process_class": "benchmarks.bench_procs:PcTrivial", '
    b'"persist": false, "nowait": false, "init_args": null, "init_kwargs": null}}, false]\n'
)


async def launch_floor(
    url: str, exchange_names: dict[str, str], n_seq: int, n: int, T: float, BT: float, worker_pid: int | None
) -> list[Result]:
    """The launch-shaped floor, one at a time as row c (``n_seq`` launches), then pipelined as row d: ``n`` tasks
    issued, then every final reply awaited.

    The client side of one launch with bare aio-pika (``worker_raw_launch.py`` is the worker's): the task
    published with publisher confirms, ``mandatory``, persistent, with ``x-pc-no-pending`` (our controllers'),
    to the task exchange; the final reply on the client's exclusive task reply queue, bound to the task exchange
    by its own name, consumed without acks (process_comms/transports/rmq/communicator.py, _topology.py).
    """
    task_exchange, task_queue = exchange_names["task_exchange"], exchange_names["task_queue"]
    connection = await asyncio.wait_for(aio_pika.connect(url), 15)
    try:
        pub = await connection.channel(publisher_confirms=True, on_return_raises=True)
        sub = await connection.channel()
        exchange = await pub.declare_exchange(task_exchange, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        sub_exchange = await sub.declare_exchange(task_exchange, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        reply_queue = await sub.declare_queue(
            f"{task_exchange}-reply-{uuid.uuid4()}",
            exclusive=True,
            auto_delete=True,
            arguments={"x-queue-type": "classic", "x-expires": 60_000},
        )
        await reply_queue.bind(sub_exchange, routing_key=reply_queue.name)
        waiters: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            fut = waiters.pop(message.correlation_id or "", None)
            if fut is not None and not fut.done():
                fut.set_result(message.body)

        await reply_queue.consume(on_reply, no_ack=True)

        async def launch() -> bytes:
            cid = str(uuid.uuid4())
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiters[cid] = fut
            try:
                await exchange.publish(
                    aio_pika.Message(
                        LAUNCH_TASK_BODY,
                        correlation_id=cid,
                        reply_to=reply_queue.name,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        headers={"x-pc-no-pending": True},
                    ),
                    routing_key=task_queue,
                    mandatory=True,
                )
                return await asyncio.wait_for(fut, BT)
            finally:
                waiters.pop(cid, None)

        for _ in range(20):  # warm-up
            await asyncio.wait_for(launch(), T)
        seq = await _one_at_a_time(Result(LAUNCH_FLOOR_SEQ, RAW, n_seq), worker_pid, launch, n_seq, T)
        res = Result(LAUNCH_FLOOR, RAW, n)

        async def timed() -> float | None:
            t0 = time.perf_counter()
            try:
                await launch()
            except Exception as exc:  # noqa: BLE001
                res.notes.append(short_error(exc))
                return None
            return time.perf_counter() - t0

        res = await _gathered(res, worker_pid, timed, n, BT)
        if not res.ok:
            res.error = f"failed: no launch answered ({'; '.join(sorted(set(res.notes)))[:140]})"
        elif res.notes:
            failed = len(res.notes)
            res.notes = [f"{failed} of {n} failed: {res.notes[-1]}"]
        return [seq, res]
    finally:
        await asyncio.wait_for(connection.close(), 10)


async def _one_at_a_time(
    res: Result, worker_pid: int | None, call: Callable[[], Awaitable[object]], n: int, T: float
) -> Result:
    """``n`` calls of ``call``, each awaited (at most ``T`` s) before the next, measured into ``res``."""
    async with _metered(res, worker_pid):
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(call(), T)
            except Exception as exc:  # noqa: BLE001
                res.notes.append(short_error(exc))
                continue
            res.latencies.append(time.perf_counter() - t0)
            res.ok += 1
    return res


async def _gathered(
    res: Result, worker_pid: int | None, timed: Callable[[], Awaitable[float | None]], n: int, BT: float
) -> Result:
    """``n`` calls of ``timed`` issued together and awaited, measured into ``res``."""
    async with _metered(res, worker_pid):
        lats = await asyncio.wait_for(asyncio.gather(*(timed() for _ in range(n))), BT + 10)
        res.latencies = [x for x in lats if x is not None]
        res.ok = len(res.latencies)
    return res


@contextlib.asynccontextmanager
async def _metered(res: Result, worker_pid: int | None) -> AsyncIterator[None]:
    """The block's wall time, the caller loop's lag during it and the worker's CPU, into ``res``."""
    monitor = LagMonitor()
    ticker = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.02)
    monitor.reset()
    meter = CpuMeter(worker_pid)
    t_start = time.perf_counter()
    yield
    res.wall = time.perf_counter() - t_start
    await stop_monitor(monitor, ticker, res)
    meter.stop(res)
