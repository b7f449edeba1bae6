"""Many live processes (issue 16): launch, status under load, kill_all, bindings and memory, on one worker
or a fleet.

Each worker runs in its own OS process (``benchmarks/worker_pc.py --fleet-worker``, a ``process_comms.Worker``
with a SQLite store of its own: the benchmark lists no records, so the store need not be shared); this
interpreter is the client. Each process is a ``PcWaiter`` sleeping in long ticks, so it stays alive and
quiet until killed. Measured, for ``--processes N`` (default 10,000) on ``--workers W`` (default 1):

* launch: ``N`` nowait launches issued at once, seconds until every pid is back, and the workers' CPU per launch;
* status p50 on one pid with all ``N`` alive, against the same with one process alive (idle);
* the workers' memory (VmRSS, summed) idle, with all alive (kB per process) and once all have ended; with
  ``--max-processes N`` each worker recycles itself after N processes (``Worker(max_processes=N)``): once all
  have ended it exits and a fresh one is started in its place (as ``process-comms daemon`` does), and "after"
  is the fresh workers' memory, measured as idle was (one process alive, the status calls made);
* ``kill_all``: seconds from the broadcast until the workers report no live process, and their CPU per end
  (the kill, the record and the unbind, until the bindings are back);
* bindings on the message exchange (``rabbitmqctl list_bindings``): idle, loaded, and seconds until back;
* the broker's own memory (``rabbitmqctl status``: the Erlang VM's total) idle and loaded;
* the broker's own floor for that: bind and unbind operations per second from a bare aio-pika client, on one
  channel and spread over four (every live process has one binding, kiwipy's ``[rpc].<pid>`` route).

Usage::

    python -m benchmarks.workloads.scale [--url amqp://...] [--processes 10000] [--workers 1] [--status-calls 300]
                                         [--max-processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import process_comms
from benchmarks.bench_procs import PcWaiter
from benchmarks.common import flags
from benchmarks.measure import process_cpu
from benchmarks.workers import Worker

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Seconds any one phase may take before the benchmark gives up on it.
PHASE_DEADLINE = 1200.0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _bindings(exchange: str) -> int:
    """Bindings whose source is ``exchange`` (each live process binds its RPC route there)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_bindings", "source_name"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip() == exchange)


def _broker_memory_mb() -> float:
    """The broker's memory as ``rabbitmqctl status`` reports it (the Erlang VM's total), in MB."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "status", "--formatter", "json"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return float(json.loads(out)["memory"]["total"]["erlang"]) / 1e6


def _live(ctl: process_comms.RemoteProcessThreadController) -> int:
    workers = ctl.list_workers(within=0.2).result(30)
    return sum(int(w.get("processes", 0)) for w in workers)


def _until(what: str, check: Any, deadline: float = PHASE_DEADLINE, every: float = 0.05) -> float:
    """Seconds until ``check()`` is true, polling every ``every`` s; RuntimeError past ``deadline``."""
    print(f"  waiting: {what}", flush=True)
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > deadline:
            raise RuntimeError(f"{what}: not done within {deadline:.0f} s")
        time.sleep(every)
    return time.perf_counter() - started


async def _binding_rates(url: str, count: int = 2000) -> dict[str, float]:
    """Binds and unbinds per second of a bare aio-pika client: the broker's floor for per-process routes."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        channels = [await conn.channel() for _ in range(4)]
        exchange = await channels[0].declare_exchange(f"pc-bench-bind-{uuid.uuid4().hex[:8]}", "topic")
        name = f"pc-bench-bind-{uuid.uuid4().hex[:8]}"
        try:
            queues = [await ch.declare_queue(name, exclusive=True) for ch in channels]
            out: dict[str, float] = {}
            for lanes in (1, 4):
                keys = [f"rpc.{uuid.uuid4()}" for _ in range(count)]
                for op in ("bind", "unbind"):
                    started = time.perf_counter()
                    await asyncio.gather(
                        *(getattr(queues[i % lanes], op)(exchange.name, routing_key=k) for i, k in enumerate(keys))
                    )
                    out[f"raw {op} /s, {lanes} channel(s)"] = count / (time.perf_counter() - started)
            return out
        finally:
            await exchange.delete()  # not auto-delete (the unbinds would remove it): never left behind
    finally:
        await conn.close()


def _status_p50(ctl: process_comms.RemoteProcessThreadController, pid: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        ctl.get_status(pid, timeout=10).result(15)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(
    url: str, processes: int, status_calls: int, log_dir: Path, workers: int = 1, max_processes: int = 0
) -> dict[str, float]:
    prefix = f"pc-bench-scale-{uuid.uuid4().hex[:8]}"
    names = {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.queue",
    }

    def start_worker(i: int, name: str) -> Worker:
        store = f"sqlite:///{log_dir / f'scale-{i}.db'}"
        argv = ["--url", url, *flags(names), "--fleet-worker", "--persister", store]
        return Worker(name, "worker_pc.py", [*argv, "--max-processes", str(max_processes)], log_dir)

    fleet = [start_worker(i, f"scale-{i}") for i in range(workers)]

    def rss_kb() -> int:
        return sum(_rss_kb(worker.proc.pid) for worker in fleet)

    def cpu_s() -> float:
        return sum(process_cpu(worker.proc.pid) or 0.0 for worker in fleet)

    comm = process_comms.connect(url, testing_mode=True, **names)
    out: dict[str, float] = {"workers": workers}
    try:
        for worker in fleet:
            worker.wait_ready(60)
        ctl = process_comms.RemoteProcessThreadController(comm)
        _until("every worker answers", lambda: len(ctl.list_workers(within=0.5).result(30)) == workers)
        waiter = {"inputs": {"tick": 3600.0}}
        first = ctl.launch_process(PcWaiter, init_kwargs=waiter, nowait=True).result(30)
        _status_p50(ctl, first, 50)  # warm up
        gc.collect()
        out["worker RSS idle MB"] = rss_kb() / 1024
        out["broker memory idle MB"] = _broker_memory_mb()
        out["bindings idle"] = _bindings(names["message_exchange"])
        out["status p50 idle ms"] = _status_p50(ctl, first, status_calls) * 1000

        print(f"  launching {processes - 1:,} processes", flush=True)
        started, cpu = time.perf_counter(), cpu_s()
        futures = [  # issued at once: the last ones wait for all before them (past the default 300 s at 100,000)
            ctl.launch_process(PcWaiter, init_kwargs=waiter, nowait=True, timeout=PHASE_DEADLINE)
            for _ in range(processes - 1)
        ]
        for fut in futures:
            fut.result(PHASE_DEADLINE)
        out["launch s"] = time.perf_counter() - started
        out["launch /s"] = (processes - 1) / out["launch s"]
        out["worker CPU ms per launch"] = (cpu_s() - cpu) * 1000 / (processes - 1)
        _until("all processes live", lambda: _live(ctl) >= processes, every=0.5)

        out["status p50 loaded ms"] = _status_p50(ctl, first, status_calls) * 1000
        out["status loaded / idle"] = out["status p50 loaded ms"] / out["status p50 idle ms"]
        loaded = rss_kb()
        out["worker RSS loaded MB"] = loaded / 1024
        out["kB per process"] = (loaded - out["worker RSS idle MB"] * 1024) / processes
        out["broker memory loaded MB"] = _broker_memory_mb()
        out["bindings loaded"] = _bindings(names["message_exchange"])

        started, cpu = time.perf_counter(), cpu_s()
        ctl.kill_all("scale benchmark")  # a broadcast: it answers nothing (plumpy's API)
        _until("kill_all", lambda: _live(ctl) == 0, every=0.1)
        out["kill_all s"] = time.perf_counter() - started
        idle_bindings = out["bindings idle"]  # measured with one process (and its route) alive
        seen: list[int] = []

        def bindings_back() -> bool:
            seen.append(_bindings(names["message_exchange"]))
            return seen[-1] <= idle_bindings

        limit = max(120.0, processes / 100)  # the broker's floor is under 1,000 unbinds a second
        try:
            out["bindings back s"] = (
                _until("bindings back", bindings_back, deadline=limit, every=0.5) + out["kill_all s"]
            )
        except RuntimeError:
            print(f"  bindings not back to {idle_bindings} within {limit:.0f} s: last counts {seen[-5:]}")
            out["bindings back s"] = float("nan")
        out["worker CPU ms per end"] = (cpu_s() - cpu) * 1000 / processes  # kill, record, unbind: all ended
        if max_processes:  # each recycles itself once its processes have ended: a fresh one takes its place
            for worker in fleet:
                _until("the recycled worker exits", lambda w=worker: w.proc.poll() is not None, every=0.1)
                out["recycled exit code"] = max(out.get("recycled exit code", 0), worker.proc.returncode or 0)
                worker.stop()
            fleet[:] = [start_worker(i, f"scale-fresh-{i}") for i in range(workers)]
            for worker in fleet:
                worker.wait_ready(60)
            _until("every fresh worker answers", lambda: len(ctl.list_workers(within=0.5).result(30)) == workers)
            fresh = ctl.launch_process(PcWaiter, init_kwargs=waiter, nowait=True).result(30)
            _status_p50(ctl, fresh, status_calls)  # as before idle was measured
            gc.collect()
        out["worker RSS after MB"] = rss_kb() / 1024
        out["RSS after / idle"] = out["worker RSS after MB"] / out["worker RSS idle MB"]
        out.update(asyncio.run(_binding_rates(url)))
        return out
    finally:
        comm.close()
        for worker in fleet:
            worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="workers sharing the task queue (own OS processes)")
    parser.add_argument("--status-calls", type=int, default=300)
    parser.add_argument(
        "--max-processes",
        type=int,
        default=0,
        help="each worker recycles itself after this many processes (0: never); use --processes / --workers",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.url, args.processes, args.status_calls, Path(tmp), args.workers, args.max_processes)
        for name, value in results.items():
            print(f"{name:28s} {value:10.2f}")


if __name__ == "__main__":
    main()
