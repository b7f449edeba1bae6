"""Measuring: results, percentiles, CPU meters, the one-at-a-time and pipelined runners, loop lag."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    short_error,
)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class Result:
    """One workload run by one implementation."""

    workload: str
    impl: str
    n: int
    ok: int = 0
    wall: float | None = None
    latencies: list[float] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    issue_us: float | None = None
    max_lag_ms: float | None = None
    p99_lag_ms: float | None = None
    cpu_worker: float | None = None
    cpu_client: float | None = None

    @property
    def ops(self) -> float | None:
        if self.error or not self.wall or not self.ok:
            return None
        return self.ok / self.wall

    def p(self, q: float) -> float | None:
        v = percentile(self.latencies, q)
        return None if v is None else v * 1000

    def merge(self, other: Result) -> None:
        """Add another round of the same workload (ABBA interleaving)."""
        self.n += other.n
        self.ok += other.ok
        self.wall = (self.wall or 0.0) + (other.wall or 0.0)
        self.latencies.extend(other.latencies)
        self.notes.extend(other.notes)
        self.error = self.error or other.error
        if other.cpu_worker is not None:
            self.cpu_worker = (self.cpu_worker or 0.0) + other.cpu_worker
        if other.cpu_client is not None:
            self.cpu_client = (self.cpu_client or 0.0) + other.cpu_client
        for key, value in other.extra.items():
            self.extra.setdefault(key, value)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``, from ``/proc``; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


#: Idle CPU seconds per second of each worker (plumpy's waker timer), subtracted from its measured CPU.
IDLE_CPU_RATE: dict[int, float] = {}


def measure_idle_cpu(pids: list[int], seconds: float = 2.0) -> None:
    """Record each idle worker's CPU rate (before any client connects)."""
    start = {pid: process_cpu(pid) for pid in pids}
    time.sleep(seconds)
    for pid in pids:
        c0, c1 = start[pid], process_cpu(pid)
        if c0 is not None and c1 is not None:
            IDLE_CPU_RATE[pid] = max(0.0, (c1 - c0) / seconds)


class CpuMeter:
    """CPU used by a worker process (less its idle rate) and by this client process until :meth:`stop`."""

    def __init__(self, worker_pid: int | None) -> None:
        self.worker_pid = worker_pid
        self.worker0 = process_cpu(worker_pid)
        self.t0 = time.perf_counter()
        t = os.times()
        self.client0 = t.user + t.system

    def stop(self, res: Result) -> Result:
        worker1 = process_cpu(self.worker_pid)
        if worker1 is not None and self.worker0 is not None:
            idle = IDLE_CPU_RATE.get(self.worker_pid or 0, 0.0) * (time.perf_counter() - self.t0)
            res.cpu_worker = max(0.0, worker1 - self.worker0 - idle)
        t = os.times()
        res.cpu_client = t.user + t.system - self.client0
        return res


def run_sequential(
    workload: str,
    impl: str,
    n: int,
    op: Callable[[], Any],
    check: Callable[[Any], bool],
    max_failures: int,
) -> Result:
    """Call ``op`` ``n`` times, one at a time; each call's latency is its full round trip."""
    res = Result(workload, impl, n)
    failures = 0
    last_error = ""
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            value = op()
        except Exception as exc:  # noqa: BLE001 - a failed call is data
            failures += 1
            last_error = short_error(exc)
        else:
            if check(value):
                res.latencies.append(time.perf_counter() - t0)
                res.ok += 1
            else:
                failures += 1
                last_error = f"unexpected result {value!r:.80}"
        if failures >= max_failures:
            res.wall = time.perf_counter() - t_start
            res.error = f"failed: {failures} of {res.ok + failures} calls failed ({last_error})"
            return res
    res.wall = time.perf_counter() - t_start
    if failures:
        res.notes.append(f"{failures} call(s) failed: {last_error}")
    return res


def run_pipelined(
    workload: str,
    impl: str,
    calls: Sequence[Callable[[], concurrent.futures.Future[Any]]],
    flat: Callable[[concurrent.futures.Future[Any]], concurrent.futures.Future[Any]],
    check: Callable[[Any], bool],
    batch_timeout: float,
    max_failures: int,
) -> tuple[Result, list[Any]]:
    """Issue every call from this thread, then wait for all: issue time, completion time, latencies."""
    res = Result(workload, impl, len(calls))
    issued: list[tuple[float, concurrent.futures.Future[Any]]] = []
    done_at: dict[int, float] = {}
    issue_failures = 0
    last_error = ""
    t_start = time.perf_counter()
    for call in calls:
        t0 = time.perf_counter()
        try:
            fut = flat(call())
        except Exception as exc:  # noqa: BLE001
            issue_failures += 1
            last_error = short_error(exc)
            if issue_failures >= max_failures:
                break
            continue
        index = len(issued)
        issued.append((t0, fut))
        fut.add_done_callback(lambda _f, i=index: done_at.__setitem__(i, time.perf_counter()))
    t_issued = time.perf_counter()
    res.issue_us = (t_issued - t_start) / max(1, len(issued) + issue_failures) * 1e6
    res.extra["issue"] = f"{t_issued - t_start:.3f} s ({res.issue_us:.0f} µs/call)"
    remaining = max(0.0, batch_timeout - (t_issued - t_start))
    concurrent.futures.wait([f for _, f in issued], timeout=remaining)
    values: list[Any] = []
    failures = issue_failures
    last_done = t_start
    for i, (t0, fut) in enumerate(issued):
        if not fut.done():
            failures += 1
            last_error = f"no answer within {batch_timeout:.0f} s"
            continue
        exc = fut.exception()
        if exc is not None:
            failures += 1
            last_error = short_error(exc)
            continue
        value = fut.result()
        if not check(value):
            failures += 1
            last_error = f"unexpected result {value!r:.80}"
            continue
        t1 = done_at.get(i, time.perf_counter())
        res.latencies.append(t1 - t0)
        last_done = max(last_done, t1)
        values.append(value)
        res.ok += 1
    res.wall = last_done - t_start if res.ok else time.perf_counter() - t_start
    res.extra["complete"] = f"{res.wall:.3f} s"
    if issue_failures >= max_failures:
        res.error = f"failed: issuing stopped after {issue_failures} failed calls ({last_error})"
    elif res.ok == 0:
        res.error = f"failed: no call succeeded ({last_error})"
    elif failures:
        res.notes.append(f"{failures} of {len(calls)} failed: {last_error}")
    return res, values


def is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def is_reply(value: Any) -> bool:
    """A status dict from a library, or the raw floor's reply bytes."""
    return isinstance(value, dict | bytes)


def is_true(value: Any) -> bool:
    return value is True


def is_pid(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, concurrent.futures.Future))


async def idle_lag(seconds: float) -> Result:
    """The caller loop's lag with no calls at all: what this (shared) machine does to a 1 ms timer."""
    monitor = LagMonitor()
    ticker = asyncio.create_task(monitor.run())
    await asyncio.sleep(seconds)
    monitor.stop()
    await asyncio.wait_for(ticker, 5)
    res = Result("h.idle", "(no calls)", 0)
    res.max_lag_ms = monitor.max_gap * 1000
    res.p99_lag_ms = (percentile(monitor.gaps, 99) or 0.0) * 1000
    res.extra["loop lag max"] = f"{res.max_lag_ms:.1f} ms"
    res.extra["loop lag p99"] = f"{res.p99_lag_ms:.1f} ms"
    res.notes.append(f"baseline: the caller loop ticking alone for {seconds:.0f} s")
    return res


class LagMonitor:
    """A ticker task: how late the caller's event loop runs a 1 ms timer (max and distribution)."""

    INTERVAL = 0.001

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.max_gap = 0.0
        self._stop = False

    def reset(self) -> None:
        self.gaps.clear()
        self.max_gap = 0.0

    def stop(self) -> None:
        self._stop = True

    async def run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(self.INTERVAL)
            now = time.perf_counter()
            gap = max(0.0, now - last - self.INTERVAL)
            self.gaps.append(gap)
            self.max_gap = max(self.max_gap, gap)
            last = now


async def stop_monitor(monitor: LagMonitor, ticker: asyncio.Task[None], res: Result) -> None:
    monitor.stop()
    await asyncio.wait_for(ticker, 5)
    res.max_lag_ms = monitor.max_gap * 1000
    res.extra["loop lag max"] = f"{res.max_lag_ms:.1f} ms"
