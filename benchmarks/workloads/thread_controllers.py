"""Workloads a-g and wakeup: the thread controllers against workers in other OS processes, in ABBA rounds."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PC,
    PC_LOOP,
    PL,
    RAW,
    RAW_T,
    SIZES,
    flags,
    names,
    short_error,
)
from benchmarks.measure import (
    CpuMeter,
    Result,
    is_dict,
    is_pid,
    is_reply,
    is_true,
    run_pipelined,
    run_sequential,
)
from benchmarks.report import fmt_ms, fmt_ops
from benchmarks.sides import PcLoopSide, PlumpySide, RawSide, RawThreadSide, Side
from benchmarks.workers import Worker
from benchmarks.workloads.asyncio_controllers import AsyncioWorkloads
from benchmarks.workloads.raw_floor import launch_floor, raw_floor


class Bench(AsyncioWorkloads):
    """Holds the sides, their live processes and the settings; runs the workloads."""

    def __init__(
        self, args: argparse.Namespace, sides: list[Side], raw_exchange: str | None, raw_pid: int | None
    ) -> None:
        self.args = args
        self.raw_pid = raw_pid
        self.sides = sides
        self.raw_exchange = raw_exchange
        self.results: list[Result] = []
        #: The launch-shaped floor's exchange names and worker pid (``worker_raw_launch.py``), when it runs.
        self.launch_floor_names: dict[str, str] | None = None
        self.launch_floor_pid: int | None = None
        self.live: dict[str, Any] = {}
        self.broken: dict[str, str] = {}
        self.order_flip = False
        self.T = args.call_timeout
        self.BT = args.batch_timeout

    def n(self, key: str) -> int:
        return max(2, round(SIZES[key] * self.args.scale))

    def ordered(self) -> list[Side]:
        """Alternate which library goes first from one concurrent workload to the next."""
        self.order_flip = not self.order_flip
        return list(self.sides) if self.order_flip else list(reversed(self.sides))

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def report(self, res: Result) -> None:
        if res.error:
            self.log(f"  {res.workload:<14} {res.impl:<24} {res.error}")
            return
        wall = "-" if res.wall is None else f"{res.wall:.3f}s"
        self.log(
            f"  {res.workload:<14} {res.impl:<24} n={res.ok}/{res.n} wall={wall} "
            f"ops/s={fmt_ops(res.ops)} p50={fmt_ms(res.p(50))} p99={fmt_ms(res.p(99))} ms "
            + " ".join(f"{k}={v}" for k, v in res.extra.items())
            + (f" [{'; '.join(res.notes)}]" if res.notes else "")
        )

    # -- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        for side in self.sides:
            try:
                pid = side.wait(side.launch_waiter(self.T), self.T)
                self.live[side.name] = pid
                for _ in range(10):
                    side.wait(side.status(pid, self.T), self.T)
                for _ in range(3):
                    side.wait(side.launch_trivial(self.T), self.T)
            except Exception as exc:  # noqa: BLE001 - report the library as failed, go on with the other
                self.broken[side.name] = f"failed: set-up (launch + status warm-up) failed: {short_error(exc)}"
                self.log(f"{side.name}: {self.broken[side.name]}")
            else:
                self.log(f"{side.name}: live waiting process {pid}")

    def working(self, workload: str, n: int, sides: list[Side]) -> list[Side]:
        """The sides that can run; a failed-set-up side gets a failed result instead."""
        out = []
        for side in sides:
            if side.name in self.broken:
                res = Result(workload, side.name, n, error=self.broken[side.name])
                self.results.append(res)
                self.report(res)
            else:
                out.append(side)
        return out

    def teardown(self) -> None:
        for side in self.sides:
            pid = self.live.get(side.name)
            if pid is None:
                continue
            try:
                side.wait(side.kill(pid, self.T), self.T)
            except Exception as exc:  # noqa: BLE001 - best effort
                self.log(f"{side.name}: could not kill the live process: {short_error(exc)}")

    # -- sequential workloads, ABBA rounds ------------------------------------------------------
    def sequential(
        self,
        workload: str,
        n: int,
        make_op: Callable[[Side], Callable[[], Any]],
        check: Any,
        rounds: int | None = None,
        extra_sides: Sequence[Side] = (),
    ) -> None:
        rounds = max(1, min(rounds or self.args.rounds, n))
        sizes = [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]
        merged: dict[str, Result] = {}
        sides = self.working(workload, n, self.sides) + list(extra_sides)
        for r, size in enumerate(sizes):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                if side.name in merged and merged[side.name].error:
                    continue
                meter = CpuMeter(side.worker_pid)
                res = run_sequential(workload, side.name, size, make_op(side), check, self.args.max_failures)
                meter.stop(res)
                if side.name in merged:
                    merged[side.name].merge(res)
                else:
                    merged[side.name] = res
        for side in sides:
            self.results.append(merged[side.name])
            self.report(merged[side.name])

    def pipelined(
        self,
        workload: str,
        n: int,
        make_call: Callable[[Side], Callable[[], concurrent.futures.Future[Any]]],
        check: Any,
    ) -> dict[str, list[Any]]:
        values: dict[str, list[Any]] = {}
        for side in self.working(workload, n, self.ordered()):
            meter = CpuMeter(side.worker_pid)
            res, vals = run_pipelined(
                workload,
                side.name,
                [make_call(side)] * n,
                side.flat,
                check,
                self.BT,
                self.args.max_failures,
            )
            meter.stop(res)
            values[side.name] = vals
            self.results.append(res)
            self.report(res)
        return values

    def w_a(self) -> None:
        self.log("a: status RPC to one live process, one at a time (raw aio-pika interleaved as the floor)")
        extra: list[Side] = []
        makers: list[tuple[str, Callable[[], Side]]] = []
        if self.raw_exchange is not None:
            raw_exchange = self.raw_exchange
            makers += [
                (RAW, lambda: RawSide(self.args.url, raw_exchange, self.raw_pid)),
                (RAW_T, lambda: RawThreadSide(self.args.url, raw_exchange, self.raw_pid)),
            ]
        pc = next((s for s in self.sides if s.name == PC), None)
        if pc is not None and PC in self.live:
            args = (self.args.url, pc.exchange_names, self.args.codec, pc.worker_pid)
            makers.append((PC_LOOP, lambda: PcLoopSide(*args)))
        for label, factory in makers:
            try:
                side = factory()
            except Exception as exc:  # noqa: BLE001 - the others still run; the verdict says what is missing
                self.log(f"a: {label} could not start: {short_error(exc)}")
                continue
            extra.append(side)

        def make(s: Side) -> Callable[[], Any]:
            if isinstance(s, RawSide):
                return lambda: s.call(self.T)
            if isinstance(s, PcLoopSide):
                return lambda: s.status(self.live[PC], self.T)
            return lambda: s.wait(s.status(self.live[s.name], self.T), self.T)

        try:
            for side in extra:  # warm-up, as the libraries' set-up
                for _ in range(20):
                    make(side)()
            # many short ABBA rounds: load drift on a shared machine hits every side alike
            self.sequential("a", self.n("a"), make, is_reply, rounds=max(self.args.rounds, 20), extra_sides=extra)
        finally:
            for side in extra:
                side.close()
        for res in self.results:  # the asyncio path gets its own comparison row
            if res.workload == "a" and res.impl == PC_LOOP:
                res.workload, res.impl = "a.loop", PC

    def w_b(self) -> None:
        self.log("b: status RPCs issued from one thread, then all awaited")
        self.pipelined("b", self.n("b"), lambda s: lambda: s.status(self.live[s.name], self.BT), is_dict)

    def w_c(self) -> None:
        self.log("c: launch (nowait=False) of a trivial process, one at a time")
        self.sequential("c", self.n("c"), lambda s: lambda: s.wait(s.launch_trivial(self.T), self.T), is_dict)

    def w_d(self) -> None:
        self.log("d: launches (nowait=False) issued, then all awaited")
        self.pipelined("d", self.n("d"), lambda s: lambda: s.launch_trivial(self.BT), is_dict)

    def w_e(self) -> None:
        self.log("e: pause + play round trip on a live process, one at a time")

        def make(s: Side) -> Callable[[], Any]:
            pid = self.live[s.name]

            def op() -> Any:
                paused = s.wait(s.pause(pid, self.T), self.T)
                played = s.wait(s.play(pid, self.T), self.T)
                return paused is True and played is True

            return op

        self.sequential("e", self.n("e"), make, is_true)

    def w_f(self) -> None:
        n = self.n("f")
        self.log(f"f: launch {n} waiting processes (nowait=True), then kill them all")
        for side in self.working("f", n, self.ordered()):
            meter = CpuMeter(side.worker_pid)
            launch, pids = run_pipelined(
                "f.launch",
                side.name,
                [lambda s=side: s.launch_waiter(self.BT)] * n,
                side.flat,
                is_pid,
                self.BT,
                self.args.max_failures,
            )
            meter.stop(launch)
            self.results.append(launch)
            self.report(launch)
            if launch.error or not pids:
                res = Result("f", side.name, n, error=launch.error or "failed: no process launched")
            else:
                meter = CpuMeter(side.worker_pid)
                res, _ = run_pipelined(
                    "f",
                    side.name,
                    [lambda s=side, p=pid: s.kill(p, self.BT) for pid in pids],
                    side.flat,
                    is_true,
                    self.BT,
                    self.args.max_failures,
                )
                meter.stop(res)
                res.extra["launch"] = f"{launch.wall:.3f} s for {launch.ok}"
                if launch.ok < n:
                    res.notes.append(f"only {launch.ok} of {n} launched")
            self.results.append(res)
            self.report(res)

    # -- wakeup: plumpy's worker as wired, without the waker (pain-points B1) ----------------------
    def w_wakeup(self) -> None:
        n = max(10, self.n("wakeup"))
        timeout = 1.0
        self.log(f"wakeup: {n} status calls ({timeout:.0f} s timeout each) to an idle worker without a waker")
        for side in self.working("wakeup", n, self.sides):
            if side.name == PC:
                self.results.append(self._probe(side, self.live[side.name], n, timeout, "worker_pc as in a-f"))
                self.report(self.results[-1])
                continue
            run_id = uuid.uuid4().hex[:8]
            exchange_names = names(run_id, "plumpy-nowaker")
            worker = Worker(
                "worker_plumpy_nowaker",
                "worker_plumpy.py",
                ["--url", self.args.url, "--waker-ms", "0", *flags(exchange_names)],
                Path(tempfile.gettempdir()),
            )
            probe_side = None
            try:
                worker.wait_ready(60)
                probe_side = PlumpySide(self.args.url, exchange_names, self.args.plumpy_asyncio_debug)
                pid = probe_side.wait(probe_side.launch_waiter(self.T), self.T)
                res = self._probe(probe_side, pid, n, timeout, "worker_plumpy --waker-ms 0")
            except Exception as exc:  # noqa: BLE001
                res = Result("wakeup", PL, n, error=f"failed: {short_error(exc)}")
            finally:
                if probe_side is not None:
                    probe_side.close()
                worker.stop()
            self.results.append(res)
            self.report(res)

    def _probe(self, side: Side, pid: Any, n: int, timeout: float, label: str) -> Result:
        res = Result("wakeup", side.name, n)
        stalls = 0
        t_start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                side.wait(side.status(pid, timeout), timeout)
            except Exception:  # noqa: BLE001 - a stall is what we count
                stalls += 1
                continue
            res.latencies.append(time.perf_counter() - t0)
            res.ok += 1
        res.wall = time.perf_counter() - t_start
        res.extra["worker"] = label
        res.notes.append(f"{stalls} of {n} status calls got no answer within {timeout:.0f} s")
        return res

    # -- g: the raw aio-pika floor --------------------------------------------------------------
    def w_g(self) -> None:
        self.log("g: raw aio-pika request/reply floor (echo server in its own OS process)")
        assert self.raw_exchange is not None
        for res in asyncio.run(
            raw_floor(
                self.args.url, self.raw_exchange, self.n("g.seq"), self.n("g.pipe"), self.T, self.BT, self.raw_pid
            )
        ):
            self.results.append(res)
            self.report(res)

    # -- g.l: the launch-shaped raw floor --------------------------------------------------------
    def w_g_l(self) -> None:
        n = self.n("g.l")
        self.log(
            f"g.l: launch-shaped floor (task, bind, 3 broadcasts, ack, reply, unbind), one at a time, "
            f"then {n} issued then awaited"
        )
        assert self.launch_floor_names is not None
        for res in asyncio.run(
            launch_floor(
                self.args.url, self.launch_floor_names, self.n("g.seq"), n, self.T, self.BT, self.launch_floor_pid
            )
        ):
            self.results.append(res)
            self.report(res)

    # -- h: the asyncio controllers, with the caller's loop lag ---------------------------------
