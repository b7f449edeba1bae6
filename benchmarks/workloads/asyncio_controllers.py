"""Workload h: the asyncio controllers on the caller's event loop, with that loop's lag."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from benchmarks.common import (
    short_error,
)
from benchmarks.measure import (
    CpuMeter,
    LagMonitor,
    Result,
    idle_lag,
    is_dict,
    percentile,
)
from benchmarks.sides import Side


class AsyncioWorkloads:
    """Workload h, mixed into :class:`~benchmarks.workloads.thread_controllers.Bench` (which sets these)."""

    args: argparse.Namespace
    results: list[Result]
    live: dict[str, Any]
    T: float
    BT: float

    def n(self, key: str) -> int:
        raise NotImplementedError

    def log(self, msg: str) -> None:
        raise NotImplementedError

    def report(self, res: Result) -> None:
        raise NotImplementedError

    def ordered(self) -> list[Side]:
        raise NotImplementedError

    def working(self, workload: str, n: int, sides: list[Side]) -> list[Side]:
        raise NotImplementedError

    # -- h: the asyncio controllers, with the caller's loop lag ---------------------------------
    def w_h(self) -> None:
        self.log("h: asyncio controllers (RemoteProcessController) on the caller's event loop")
        res = asyncio.run(idle_lag(2.0))
        self.results.append(res)
        self.report(res)
        for key in ("h.a", "h.b", "h.d", "h.e"):
            for side in self.working(key, self.n(key), self.ordered()):
                meter = CpuMeter(side.worker_pid)
                try:
                    res = asyncio.run(asyncio.wait_for(self.h_one(side, key), self.BT + 30))
                    meter.stop(res)
                except Exception as exc:  # noqa: BLE001
                    res = Result(key, side.name, self.n(key), error=f"failed: {short_error(exc)}")
                self.results.append(res)
                self.report(res)

    async def h_one(self, side: Side, key: str) -> Result:
        n = self.n(key)
        pid = self.live[side.name]
        T = self.T
        res = Result(key, side.name, n)
        monitor = LagMonitor()
        ticker = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.02)
        # warm-up of the asyncio path (not measured)
        try:
            await side.a_status(pid, T)
        except Exception as exc:  # noqa: BLE001
            res.notes.append(f"warm-up failed: {short_error(exc)}")
        monitor.reset()
        t_start = time.perf_counter()
        failures = 0
        last_error = ""
        try:
            if key in ("h.a", "h.e"):
                for _ in range(n):
                    t0 = time.perf_counter()
                    try:
                        if key == "h.a":
                            ok = is_dict(await side.a_status(pid, T))
                        else:
                            ok = (await side.a_pause(pid, T)) is True and (await side.a_play(pid, T)) is True
                    except Exception as exc:  # noqa: BLE001
                        ok = False
                        last_error = short_error(exc)
                    if ok:
                        res.latencies.append(time.perf_counter() - t0)
                        res.ok += 1
                    else:
                        failures += 1
                        last_error = last_error or "unexpected result"
                        if failures >= self.args.max_failures:
                            res.error = f"failed: {failures} of {res.ok + failures} calls failed ({last_error})"
                            break
                res.wall = time.perf_counter() - t_start
            else:

                async def one() -> tuple[bool, float, str]:
                    t0 = time.perf_counter()
                    try:
                        if key == "h.b":
                            ok = is_dict(await side.a_status(pid, self.BT))
                        else:
                            ok = is_dict(await side.a_launch_trivial(self.BT))
                        return ok, time.perf_counter() - t0, "" if ok else "unexpected result"
                    except Exception as exc:  # noqa: BLE001
                        return False, time.perf_counter() - t0, short_error(exc)

                outcomes = await asyncio.gather(*(one() for _ in range(n)))
                res.wall = time.perf_counter() - t_start
                for ok, lat, err in outcomes:
                    if ok:
                        res.ok += 1
                        res.latencies.append(lat)
                    else:
                        failures += 1
                        last_error = err
                if res.ok == 0:
                    res.error = f"failed: no call succeeded ({last_error})"
                elif failures:
                    res.notes.append(f"{failures} of {n} failed: {last_error}")
        finally:
            monitor.stop()
            await asyncio.wait_for(ticker, 5)
        res.max_lag_ms = monitor.max_gap * 1000
        res.p99_lag_ms = (percentile(monitor.gaps, 99) or 0.0) * 1000
        res.extra["loop lag max"] = f"{res.max_lag_ms:.1f} ms"
        res.extra["loop lag p99"] = f"{res.p99_lag_ms:.1f} ms"
        if failures and not res.error and key in ("h.a", "h.e"):
            res.notes.append(f"{failures} call(s) failed: {last_error}")
        return res
