"""Benchmark process_comms against plumpy 0.26 + kiwipy 0.9 on the same RabbitMQ broker.

Each library gets a worker in a separate OS process (``worker_pc.py``, ``worker_plumpy.py``; the floor's
echo server is ``worker_raw.py``) on its own, unique exchanges and task queue. The client side runs here:
process_comms' ``RemoteProcessThreadController`` / ``RemoteProcessController`` and plumpy's
``RemoteProcessThreadController`` / ``RemoteProcessController`` on a ``kiwipy.rmq.RmqThreadCommunicator``.
The libraries run interleaved: one-at-a-time workloads in ABBA rounds, concurrent ones alternating who
goes first. Every wait is bounded; a library that cannot finish a workload is reported as ``failed``.

Usage::

    /tmp/venv/bin/python benchmarks/run.py                     # full scale, writes benchmarks/results.md
    /tmp/venv/bin/python benchmarks/run.py --scale 0.1         # quick smoke run
    /tmp/venv/bin/python benchmarks/run.py --only a,b,g        # some workloads (a-h, codec, facade)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import kiwipy  # noqa: E402
import plumpy  # noqa: E402
import yaml  # noqa: E402
from kiwipy.rmq import RmqThreadCommunicator  # noqa: E402

import process_comms  # noqa: E402
from benchmarks import bench_procs  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
ALL_WORKLOADS = ("a", "b", "c", "d", "e", "f", "g", "h", "codec", "facade", "wakeup")
#: Full-scale sizes (multiplied by --scale).
SIZES = {
    "a": 1000,
    "b": 2000,
    "c": 200,
    "d": 1000,
    "e": 200,
    "f": 200,
    "g.seq": 500,
    "g.pipe": 2000,
    "h.a": 500,
    "h.b": 2000,
    "h.d": 1000,
    "h.e": 200,
    "codec": 5000,
    "facade": 2000,
    "wakeup": 40,
}
PC = "process_comms"
PL = "plumpy"
RAW = "raw aio-pika"
RAW_T = "raw aio-pika, loop on a thread"
PC_LOOP = "process_comms asyncio, own loop"
ECHO_KEY = "[rpc].echo"


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# worker subprocesses
# ------------------------------------------------------------------------------------------------


class Worker:
    """A worker subprocess that prints ``READY`` when it serves; stopped with bounded waits."""

    def __init__(self, name: str, script: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(ROOT),
            env=env,
        )

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {self.name} did not become ready (log {self.log_path}):\n{tail}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                buf += chunk
        if not buf.startswith(b"READY"):
            raise RuntimeError(f"worker {self.name} said {buf!r} instead of READY")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    print(f"warning: worker {self.name} (pid {proc.pid}) did not exit", file=sys.stderr)
        if proc.stdout is not None:
            proc.stdout.close()
        self._log.close()


def close_bounded(fn: Callable[[], Any], timeout: float = 10.0) -> None:
    """Run a close function on a daemon thread and wait at most ``timeout`` seconds."""
    thread = threading.Thread(target=fn, daemon=True, name="bench-close")
    thread.start()
    thread.join(timeout)


# ------------------------------------------------------------------------------------------------
# the two client sides, behind one small interface
# ------------------------------------------------------------------------------------------------


def names(run_id: str, lib: str) -> dict[str, str]:
    prefix = f"pcbench-{run_id}-{lib}"
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }


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


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text[:140]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# runners
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# workloads a-f (thread controllers, worker in another OS process)
# ------------------------------------------------------------------------------------------------


class Bench:
    """Holds the sides, their live processes and the settings; runs the workloads."""

    def __init__(
        self, args: argparse.Namespace, sides: list[Side], raw_exchange: str | None, raw_pid: int | None
    ) -> None:
        self.args = args
        self.raw_pid = raw_pid
        self.sides = sides
        self.raw_exchange = raw_exchange
        self.results: list[Result] = []
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
                ["--url", self.args.url, "--waker-ms", "0", *_flags(exchange_names)],
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


# ------------------------------------------------------------------------------------------------
# g: raw aio-pika request/reply
# ------------------------------------------------------------------------------------------------


async def _stop_monitor(monitor: LagMonitor, ticker: asyncio.Task[None], res: Result) -> None:
    monitor.stop()
    await asyncio.wait_for(ticker, 5)
    res.max_lag_ms = monitor.max_gap * 1000
    res.extra["loop lag max"] = f"{res.max_lag_ms:.1f} ms"


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
            res = Result(f"g.seq{label}", RAW, n_seq)
            monitor = LagMonitor()
            ticker = asyncio.create_task(monitor.run())
            await asyncio.sleep(0.02)
            monitor.reset()
            meter = CpuMeter(worker_pid)
            t_start = time.perf_counter()
            for _ in range(n_seq):
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(call(), T)
                except Exception as exc:  # noqa: BLE001
                    res.notes.append(short_error(exc))
                    continue
                res.latencies.append(time.perf_counter() - t0)
                res.ok += 1
            res.wall = time.perf_counter() - t_start
            await _stop_monitor(monitor, ticker, res)
            results.append(meter.stop(res))
            # pipelined
            res = Result(f"g.pipe{label}", RAW, n_pipe)

            async def timed() -> float | None:
                t0 = time.perf_counter()
                try:
                    await call()
                except Exception:  # noqa: BLE001
                    return None
                return time.perf_counter() - t0

            monitor = LagMonitor()
            ticker = asyncio.create_task(monitor.run())
            await asyncio.sleep(0.02)
            monitor.reset()
            meter = CpuMeter(worker_pid)
            t_start = time.perf_counter()
            lats = await asyncio.wait_for(asyncio.gather(*(timed() for _ in range(n_pipe))), BT + 10)
            res.wall = time.perf_counter() - t_start
            res.latencies = [x for x in lats if x is not None]
            res.ok = len(res.latencies)
            await _stop_monitor(monitor, ticker, res)
            results.append(meter.stop(res))
            await channel.close()
    finally:
        await asyncio.wait_for(connection.close(), 10)
    return results


# ------------------------------------------------------------------------------------------------
# codec cost and the thread facade's own overhead (in-process, no broker)
# ------------------------------------------------------------------------------------------------


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

        core_us = comm.submit(core_loop()).result(120)
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


# ------------------------------------------------------------------------------------------------
# environment and tables
# ------------------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    def run(cmd: list[str], timeout: float = 30) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            return (out.stdout or out.stderr).strip()
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({short_error(exc)})"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rabbit = run(["rabbitmqctl", "version"]).splitlines()
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "process_comms"])
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "process_comms": f"{process_comms.__version__} (git {commit}{', process_comms/ modified' if dirty else ''})",
        "plumpy": plumpy.__version__,
        "kiwipy": kiwipy.__version__,
        "aio-pika": aio_pika.__version__,
        "PyYAML": f"{yaml.__version__} (libyaml: {yaml.__with_libyaml__})",
        "RabbitMQ": rabbit[-1] if rabbit else "unknown",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "os": platform.platform(),
    }


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_ops(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


DESCRIPTIONS = {
    "a": "status RPC, one at a time",
    "a.loop": "status RPC, one at a time, asyncio ctl on its own loop",
    "b": "status RPC, all issued then awaited",
    "c": "launch nowait=False (trivial), one at a time",
    "d": "launch nowait=False (trivial), all issued then awaited",
    "e": "pause + play round trip, one at a time",
    "f": "kill N waiting processes (issued then awaited)",
    "f.launch": "(f) launch N waiting processes nowait=True",
    "h.a": "asyncio ctl: status, one at a time",
    "h.b": "asyncio ctl: status, gathered",
    "h.d": "asyncio ctl: launch nowait=False, gathered",
    "h.e": "asyncio ctl: pause + play, one at a time",
    "wakeup": "status to an idle worker, no waker (B1 probe)",
    "h.idle": "caller loop alone, no calls (lag baseline)",
}
#: Which floor result a workload's p50 is compared with, and how many request/replies one op is.
FLOOR = {
    "a": ("g.seq+confirms", 1),
    "a.loop": ("a", 1),
    "b": ("g.pipe+confirms", 1),
    "c": ("g.seq+confirms", 1),
    "d": ("g.pipe+confirms", 1),
    "e": ("g.seq+confirms", 2),
    "f": ("g.pipe+confirms", 1),
    "h.a": ("g.seq+confirms", 1),
    "h.b": ("g.pipe+confirms", 1),
    "h.d": ("g.pipe+confirms", 1),
    "h.e": ("g.seq+confirms", 2),
}
TARGETS = {
    "a": "≥3x plumpy ops/s; p50 ≤ 1.3x raw",
    "a.loop": "p50 ≤ 1.3x raw",
    "b": "≥4x plumpy; issue < 50 µs/call",
    "c": "≥4x plumpy",
    "d": "≥8x plumpy",
    "e": "≥3x plumpy",
    "f": "≥3x plumpy",
    "h.a": "caller loop lag ≤ 50 ms",
    "h.b": "caller loop lag ≤ 50 ms",
    "h.d": "caller loop lag ≤ 50 ms",
    "h.e": "caller loop lag ≤ 50 ms",
}


def verdict(key: str, pc: Result | None, pl: Result | None, raw_p50: float | None) -> str:
    if pc is None:
        return "not run"
    if pc.error:
        return "MISS (process_comms failed)"
    misses: list[str] = []
    ratio = pc.ops / pl.ops if pl is not None and pl.ops and pc.ops else None
    need = {"a": 3, "b": 4, "c": 4, "d": 8, "e": 3, "f": 3}.get(key)
    if need is not None:
        if pl is not None and pl.error and ratio is None:
            pass  # plumpy failed: the ratio is unbounded
        elif ratio is None:
            misses.append("no plumpy ratio")
        elif ratio < need:
            misses.append(f"ratio {ratio:.1f}x < {need}x")
    if key in ("a", "a.loop") and raw_p50 is not None and pc.p(50) is not None and pc.p(50) > 1.3 * raw_p50:
        misses.append(f"p50 {pc.p(50) / raw_p50:.2f}x raw > 1.3x")
    if key == "b" and pc.issue_us is not None and pc.issue_us >= 50:
        misses.append(f"issue {pc.issue_us:.0f} µs ≥ 50")
    if key.startswith("h.") and pc.max_lag_ms is not None and pc.max_lag_ms > 50:
        misses.append(f"lag {pc.max_lag_ms:.0f} ms > 50")
    if key in ("a", "a.loop") and raw_p50 is None:
        misses.append("raw floor not measured")
    if not misses:
        return "met" + (" (plumpy failed)" if pl is not None and pl.error else "")
    return "MISS: " + "; ".join(misses)


def raw_cell(key: str, raw: Result | None, raw_p50: float | None, floor_key: str, calls: int) -> str:
    if raw is None or raw_p50 is None:
        return "-"
    text = f"{fmt_ms(raw_p50)} ms ({floor_key}{' x2' if calls == 2 else ''})"
    if key.startswith("h.") and raw.max_lag_ms is not None:
        text += f", its loop lag max {raw.max_lag_ms:.0f} ms"
    return text


def cpu_per_op(res: Result | None) -> str:
    if res is None or res.error or not res.ok or res.cpu_worker is None:
        return "-"
    return f"{res.cpu_worker / res.ok * 1000:.1f}"


def build_tables(results: list[Result]) -> tuple[str, str, dict[str, str]]:
    """The per-run table, the comparison table, and the verdict per workload."""
    rows = []
    for res in results:
        desc = DESCRIPTIONS.get(res.workload, "raw request/reply" if res.workload.startswith("g.") else "")
        if res.error:
            rows.append([res.workload, desc, res.impl, f"{res.ok}/{res.n}", res.error, "", "", "", "", "", ""])
            continue
        extra = [f"{k} {v}" for k, v in res.extra.items()] + res.notes
        cpu = "/".join(
            "-" if c is None or not res.ok else f"{c / res.ok * 1000:.2f}" for c in (res.cpu_worker, res.cpu_client)
        )
        rows.append(
            [
                res.workload,
                desc,
                res.impl,
                f"{res.ok}/{res.n}",
                f"{res.wall:.3f}" if res.wall is not None else "-",
                fmt_ops(res.ops),
                fmt_ms(res.p(50)),
                fmt_ms(res.p(90)),
                fmt_ms(res.p(99)),
                cpu,
                "; ".join(extra),
            ]
        )
    detail = md_table(
        [
            "wl",
            "what",
            "impl",
            "ok/n",
            "wall s",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "CPU ms/op worker/client",
            "details",
        ],
        rows,
    )
    by = {(r.workload, r.impl): r for r in results}
    comp_rows = []
    verdicts: dict[str, str] = {}
    for key in FLOOR:
        pc, pl = by.get((key, PC)), by.get((key, PL))
        if pc is None and pl is None:
            continue
        floor_key, calls = FLOOR[key]
        raw = by.get((floor_key, RAW))
        if by.get((floor_key, RAW)) is not None and floor_key == "a":  # a.loop: a's interleaved floor
            floor_key = "a, interleaved, +confirms"
        if by.get((key, RAW)) is not None:  # a floor interleaved with the libraries in this workload
            floor_key, calls, raw = f"{key}, interleaved, +confirms", 1, by[(key, RAW)]
        raw_p50 = raw.p(50) * calls if raw is not None and raw.p(50) is not None else None
        ratio = pc.ops / pl.ops if pc is not None and pl is not None and pc.ops and pl.ops else None
        pc_p50 = pc.p(50) if pc is not None and not pc.error else None
        verdicts[key] = verdict(key, pc, pl, raw_p50)

        def cell(res: Result | None) -> str:
            if res is None:
                return "not run"
            if res.error:
                return res.error
            text = f"{fmt_ops(res.ops)} ops/s, p50 {fmt_ms(res.p(50))} ms"
            if res.max_lag_ms is not None:
                text += f", loop lag max {res.max_lag_ms:.0f} ms"
            return text

        raw_text = raw_cell(key, raw, raw_p50, floor_key, calls)
        raw_ratio = f"{pc_p50 / raw_p50:.2f}x" if pc_p50 is not None and raw_p50 else "-"
        threaded = by.get((key, RAW_T))
        if threaded is not None and threaded.p(50) is not None and pc_p50 is not None:
            # the floor for a blocking caller: raw aio-pika behind the same kind of thread hop
            raw_text += f"; loop on a thread {fmt_ms(threaded.p(50))} ms"
            raw_ratio += f" ({pc_p50 / threaded.p(50):.2f}x the threaded floor)"
        comp_rows.append(
            [
                key,
                DESCRIPTIONS[key],
                cell(pc),
                cell(pl),
                raw_text,
                f"{ratio:.1f}x" if ratio is not None else ("∞ (plumpy failed)" if pl is not None and pl.error else "-"),
                raw_ratio,
                f"{cpu_per_op(pc)} / {cpu_per_op(pl)}",
                TARGETS[key],
                verdicts[key],
            ]
        )
    comparison = md_table(
        [
            "wl",
            "what",
            "process_comms",
            "plumpy",
            "raw floor p50",
            "pc ÷ plumpy ops/s",
            "pc p50 ÷ raw p50",
            "worker CPU ms/op pc / plumpy",
            "target",
            "verdict",
        ],
        comp_rows,
    )
    return detail, comparison, verdicts


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark process_comms vs plumpy 0.26 on RabbitMQ (workers in separate OS processes)."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="RabbitMQ URL (default %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N by this (e.g. 0.1 for a smoke run)")
    parser.add_argument("--only", default="", help=f"comma-separated workloads among {','.join(ALL_WORKLOADS)}")
    parser.add_argument("--call-timeout", type=float, default=5.0, help="seconds per one-at-a-time call")
    parser.add_argument("--batch-timeout", type=float, default=120.0, help="seconds for an issued-then-awaited batch")
    parser.add_argument("--max-failures", type=int, default=5, help="abort a workload for a library after this many")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds for the one-at-a-time workloads")
    parser.add_argument(
        "--pc-tick",
        type=float,
        default=60.0,
        help="PcWaiter's sleep per loop in seconds (each tick broadcasts 2 state changes; plumpy's waiter none)",
    )
    parser.add_argument("--codec", default="yaml", help="process_comms codec on the wire (yaml, json)")
    parser.add_argument("--plumpy-asyncio-debug", action="store_true", help="keep kiwipy's testing-mode debug loop")
    parser.add_argument(
        "--plumpy-waker-ms",
        type=float,
        default=1.0,
        help="wake plumpy's worker loop every N ms in a-h (hides its lost wake-ups; 0 = as wired)",
    )
    parser.add_argument("--no-plumpy", action="store_true", help="skip plumpy (process_comms and the floor only)")
    parser.add_argument("--output", default=str(HERE / "results.md"), help="markdown output ('' for none)")
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()] or list(ALL_WORKLOADS)
    unknown = sorted(set(only) - set(ALL_WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}: choose among {','.join(ALL_WORKLOADS)}")
    args.selected = [w for w in ALL_WORKLOADS if w in only]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    run_id = uuid.uuid4().hex[:8]
    log_dir = Path(tempfile.mkdtemp(prefix=f"pcbench-{run_id}-"))
    print(f"run {run_id}: workloads {','.join(args.selected)} at scale {args.scale}; worker logs in {log_dir}")
    print(f"load average at start: {os.getloadavg()}")
    load_start = os.getloadavg()
    broker = {"a", "b", "c", "d", "e", "f", "h", "wakeup"} & set(args.selected)
    workers: list[Worker] = []
    sides: list[Side] = []
    results: list[Result] = []
    codec_rows: list[tuple[str, str, int, float]] = []
    facade_rows: list[tuple[str, float]] = []
    failures: list[str] = []
    raw_exchange = f"pcbench-{run_id}-raw.messages" if {"a", "g"} & set(args.selected) else None
    t_begin = time.perf_counter()
    try:
        pc_names, pl_names = names(run_id, "pc"), names(run_id, "plumpy")
        if broker:
            workers.append(
                Worker(
                    "worker_pc",
                    "worker_pc.py",
                    ["--url", args.url, "--codec", args.codec, *_flags(pc_names)],
                    log_dir,
                )
            )
            if not args.no_plumpy:
                extra = ["--waker-ms", str(args.plumpy_waker_ms)]
                if args.plumpy_asyncio_debug:
                    extra.append("--asyncio-debug")
                workers.append(
                    Worker("worker_plumpy", "worker_plumpy.py", ["--url", args.url, *extra, *_flags(pl_names)], log_dir)
                )
        if raw_exchange:
            workers.append(
                Worker("worker_raw", "worker_raw.py", ["--url", args.url, "--exchange", raw_exchange], log_dir)
            )
        for worker in workers:
            worker.wait_ready(60)
        measure_idle_cpu([w.proc.pid for w in workers])
        idle_note = ", ".join(f"{w.name} {IDLE_CPU_RATE.get(w.proc.pid, 0.0) * 1000:.0f} ms/s" for w in workers)
        print(f"idle worker CPU (subtracted from worker CPU/op): {idle_note}")
        args.idle_note = idle_note
        if broker:
            sides.append(PcSide(args.url, pc_names, args.codec, args.pc_tick))
            if not args.no_plumpy:
                sides.append(PlumpySide(args.url, pl_names, args.plumpy_asyncio_debug))
        by_name = {w.name: w.proc.pid for w in workers}
        for side in sides:
            side.worker_pid = by_name.get("worker_pc" if side.name == PC else "worker_plumpy")
        bench = Bench(args, sides, raw_exchange, by_name.get("worker_raw"))
        if broker:
            bench.setup()
        for workload in args.selected:
            try:
                if workload == "codec":
                    bench.log("codec: encode + decode per message")
                    codec_rows = bench_codec(bench.n("codec"))
                elif workload == "facade":
                    bench.log("facade: thread facade overhead on the embedded default (no broker)")
                    facade_rows = bench_facade(bench.n("facade"))
                else:
                    getattr(bench, f"w_{workload}")()
            except Exception as exc:  # noqa: BLE001 - one workload failing must not stop the others
                failures.append(f"{workload}: {short_error(exc)}")
                bench.log(f"workload {workload} failed: {short_error(exc)}")
        if broker:
            bench.teardown()
        results = bench.results
    finally:
        for side in sides:
            side.close()
        for worker in workers:
            worker.stop()
    load_end = os.getloadavg()

    detail, comparison, _verdicts = build_tables(results)
    doc = render(
        args, env, run_id, detail, comparison, codec_rows, facade_rows, failures, load_start, load_end, t_begin
    )
    print()
    print(doc)
    if args.output:
        Path(args.output).write_text(doc + "\n")
        print(f"\nwritten to {args.output}")
    return 0


def _flags(exchange_names: dict[str, str]) -> list[str]:
    return [
        "--message-exchange",
        exchange_names["message_exchange"],
        "--task-exchange",
        exchange_names["task_exchange"],
        "--task-queue",
        exchange_names["task_queue"],
    ]


def render(
    args: argparse.Namespace,
    env: dict[str, str],
    run_id: str,
    detail: str,
    comparison: str,
    codec_rows: list[tuple[str, str, int, float]],
    facade_rows: list[tuple[str, float]],
    failures: list[str],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    t_begin: float,
) -> str:
    out = [
        "# process_comms vs plumpy 0.26 — benchmark results",
        "",
        f"- date: {env['date']} (run `{run_id}`, {time.perf_counter() - t_begin:.0f} s)",
        f"- command: `python benchmarks/run.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- versions: Python {env['python']}, process_comms {env['process_comms']}, plumpy {env['plumpy']}, "
        f"kiwipy {env['kiwipy']}, aio-pika {env['aio-pika']}, PyYAML {env['PyYAML']}, RabbitMQ {env['RabbitMQ']}",
        f"- machine: {env['nproc']} CPUs, {env['cpu']}, {env['os']}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end (shared, noisy machine)",
        f"- scale {args.scale}; per-call timeout {args.call_timeout} s; batch timeout {args.batch_timeout} s; "
        f"process_comms codec {args.codec}; PcWaiter tick {args.pc_tick} s; "
        f"kiwipy asyncio debug {'on' if args.plumpy_asyncio_debug else 'off'}; "
        f"plumpy worker waker {args.plumpy_waker_ms or 'off'}",
        "",
        "Setup: one worker per library in its own OS process on the same broker, unique exchanges per run. "
        "process_comms: `process_comms.connect(url, ..., testing_mode=True)` + `ProcessLauncher(persister="
        "InMemoryPersister())`. plumpy: `RmqThreadCommunicator.connect(..., testing_mode=True)` wrapped in "
        "`plumpy.communications.LoopCommunicator` on the worker's loop, `plumpy.ProcessLauncher(loop, persister, "
        "load_context(loop, communicator))`, each process created with that communicator (as AiiDA's daemon). "
        "Clients: each library's `RemoteProcessThreadController` (a-f) and `RemoteProcessController` (h); plumpy's "
        "nested futures unwrapped. One-at-a-time workloads run in ABBA rounds; concurrent ones alternate who goes "
        "first. Latency = issue → final answer; ops/s = successful ops ÷ wall time.",
        "",
        "## Comparison",
        "",
        comparison,
        "",
        "## All runs",
        "",
        detail,
    ]
    if codec_rows:
        out += [
            "",
            "## Codec cost (encode + decode, in-process)",
            "",
            md_table(
                ["codec", "message", "bytes", "µs / op"],
                [[c, w, str(b), f"{us:.1f}"] for c, w, b, us in codec_rows],
            ),
        ]
    if facade_rows:
        out += [
            "",
            "## Thread facade overhead (embedded default: `process_comms.connect()`, in-process launcher)",
            "",
            md_table(["measurement", "µs / call"], [[label, f"{us:.1f}"] for label, us in facade_rows]),
        ]
    if failures:
        out += ["", "## Workloads that raised", ""] + [f"- {f}" for f in failures]
    out += ["", "## Notes", "", *NOTES]
    if getattr(args, "idle_note", None):
        out.append(f"- idle worker CPU measured before the run and subtracted from worker CPU/op: {args.idle_note}.")
    return "\n".join(out)


NOTES = [
    "- plumpy's worker loop gets a 1 ms no-op timer (`--plumpy-waker-ms`, default 1): without it plumpy's "
    "`LoopCommunicator` loses wake-ups (pain-points B1) and a large share of RPCs to an idle worker never get "
    "an answer (row `wakeup`); with it plumpy can be measured at all. `--plumpy-waker-ms 0` measures it as wired.",
    "- kiwipy's `testing_mode=True` also turns on asyncio debug mode on its I/O loop; it is switched off for the "
    "measurements (`--plumpy-asyncio-debug` keeps it) so that plumpy is not slowed by a test setting.",
    "- `PcWaiter` sleeps in ticks of `--pc-tick` seconds (60 by default): every tick is two state transitions, "
    "each broadcast (`state_changed.*`); plumpy's waiting process emits nothing while it waits. With 0.5 s ticks, "
    "200 waiting processes broadcast 800 messages/s and saturate the worker.",
    "- CPU ms/op: user+system CPU of the worker process (from /proc) and of this client process (both libraries' "
    "client threads) over the workload, per successful op; less sensitive to the shared machine's load than "
    "wall time.",
    "- raw floor: bare aio-pika request/reply to an echo server in its own OS process (no codec, no dispatch); "
    "'x2' where one op is two request/replies (pause + play). The h rows compare the caller-loop lag with the "
    "floor's own lag when it runs in the caller's loop.",
    "- The broker and the 2 CPUs are shared with other sessions (tests, fault injection); compare the libraries "
    "within one run (they are interleaved), not across runs.",
]


if __name__ == "__main__":
    sys.exit(main())
