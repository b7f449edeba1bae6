"""Workloads codec and facade: codec cost and the thread facade's own overhead (no broker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kiwipy

import process_comms
from benchmarks import bench_procs
from benchmarks.common import (
    short_error,
)


def bench_codec(n: int) -> list[tuple[str, str, int, float]]:
    """µs per encode+decode of a status reply and a launch task envelope, per codec."""
    proc = bench_procs.PcWaiter(inputs={"tick": 0.5})
    status_reply = {"result": proc.status_info()}
    envelope = (process_comms.create_launch_body(bench_procs.PcTrivial, None, {"inputs": {"x": 1}}), False)
    kiwi_encode = kiwipy.rmq.defaults.ENCODER
    kiwi_decode = kiwipy.rmq.defaults.DECODER

    class KiwiDefault:
        def encode(self, obj: Any) -> bytes:
            return kiwi_encode(obj)

        def decode(self, data: bytes) -> Any:
            return kiwi_decode(data)

    codecs: list[tuple[str, Any]] = [
        ("process_comms YamlCodec", process_comms.YamlCodec()),
        ("process_comms JsonCodec", process_comms.JsonCodec()),
        ("kiwipy default (yaml.dump + FullLoader, plumpy's)", KiwiDefault()),
    ]
    rows = []
    for label, codec in codecs:
        for what, obj in (("status reply", status_reply), ("task envelope", envelope)):
            try:
                data = codec.encode(obj)
                codec.decode(data)
                t0 = time.perf_counter()
                for _ in range(n):
                    codec.decode(codec.encode(obj))
                us = (time.perf_counter() - t0) / n * 1e6
                rows.append((label, what, len(data), us))
            except Exception as exc:  # noqa: BLE001
                rows.append((label, f"{what} (failed: {short_error(exc)})", 0, float("nan")))
    return rows


def bench_facade(n: int) -> list[tuple[str, float]]:
    """Status round trips on the embedded default: thread facade vs the core on its own loop."""
    rows: list[tuple[str, float]] = []
    with process_comms.connect() as comm, process_comms.ProcessLauncher() as launcher:
        comm.add_task_subscriber(launcher)
        ctl = process_comms.RemoteProcessThreadController(comm)
        pid = ctl.launch_process(bench_procs.PcWaiter, init_kwargs={"inputs": {"tick": 3600}}, nowait=True).result(10)
        for _ in range(100):
            ctl.get_status(pid).result(5)
        t0 = time.perf_counter()
        for _ in range(n):
            ctl.get_status(pid).result(5)
        facade = (time.perf_counter() - t0) / n * 1e6
        rows.append(("thread facade: get_status(pid).result(), one at a time", facade))

        t0 = time.perf_counter()
        futs = [ctl.get_status(pid) for _ in range(n)]
        issue = (time.perf_counter() - t0) / n * 1e6
        process_comms.wait_all(futs, timeout=60)
        batch = (time.perf_counter() - t0) / n * 1e6
        rows.append(("thread facade: issuing get_status (returns a future)", issue))
        rows.append(("thread facade: issue all, then wait_all (per call)", batch))

        msg = process_comms.MessageBuilder.status()

        async def core_loop() -> float:
            core = comm.core
            start = time.perf_counter()
            for _ in range(n):
                await core.rpc_send(pid, msg)
            return (time.perf_counter() - start) / n * 1e6

        core_us = comm.submit(core_loop).result(120)  # the function, not a coroutine object
        rows.append(("core: await core.rpc_send() on the communicator's own loop", core_us))
        rows.append(("=> thread facade overhead per call (facade - core)", facade - core_us))

        async def async_ctl() -> float:
            actl = process_comms.RemoteProcessController(comm)
            await actl.get_status(pid)
            start = time.perf_counter()
            for _ in range(n):
                await actl.get_status(pid)
            return (time.perf_counter() - start) / n * 1e6

        rows.append(("asyncio controller from another loop: await get_status()", asyncio.run(async_ctl())))
        ctl.kill_process(pid).result(10)
    return rows
