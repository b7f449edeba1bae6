"""Process records (issue 14): ``list_processes`` over 10,000 records, and launch throughput with records on/off.

The listing worker runs in this interpreter; for launch throughput the worker runs in its own OS process
(``benchmarks/worker_pc.py``, as in ``benchmarks/run.py``), so the client and the worker do not share a GIL.
The store is a SQLite file, as a worker's default. Usage::

    python -m benchmarks.workloads.records [--url amqp://...] [--records 10000] [--launches 300] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import process_comms
from benchmarks.bench_procs import PcTrivial
from benchmarks.common import flags
from benchmarks.measure import process_cpu
from benchmarks.workers import Worker
from process_comms.worker.persistence import SqlPersister

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _names() -> dict[str, Any]:
    prefix = f"pc-bench-records-{uuid.uuid4().hex[:8]}"
    return {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.queue",
        "testing_mode": True,
    }


def _fill(store: SqlPersister, count: int) -> None:
    now = time.time()
    batch = []
    for i in range(count):
        ctime = now - count + i
        batch.append(
            {
                "pid": uuid.uuid4(),
                "class": "tests.procs:Add",
                "inputs": {"a": i, "b": 1},
                "state_name": "finished" if i % 10 else "excepted",
                "paused": False,
                "status": None,
                "progress": {"done": i},
                "outputs": {"sum": i + 1},
                "history": [{"event": "created", "time": ctime}, {"event": "finished", "time": ctime}],
                "host": {"hostname": "bench", "pid": 1},
                "ctime": ctime,
                "mtime": ctime,
            }
        )
        if len(batch) == 1000:
            store.save_records(batch)
            batch = []
    store.save_records(batch)


def bench_list(url: str, records: int, calls: int) -> dict[str, float]:
    """p50/p90 seconds of ``list_processes()`` (limit 100) and of ``list_processes(state='excepted')``."""
    names = _names()
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'records.db'}"
        store = SqlPersister(db)
        _fill(store, records)
        store.close()
        worker = process_comms.Worker(url, persister=db, **names).start()
        comm = process_comms.connect(url, **names)
        try:
            ctl = process_comms.RemoteProcessThreadController(comm)
            assert len(ctl.list_processes().result(30)) == 100
            out: dict[str, float] = {}
            for label, kwargs in (("list", {}), ("list state=excepted", {"state": "excepted"})):
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    ctl.list_processes(**kwargs).result(30)
                    times.append(time.perf_counter() - started)
                times.sort()
                out[f"{label} p50"] = statistics.median(times)
                out[f"{label} p90"] = times[int(len(times) * 0.9)]
            return out
        finally:
            comm.close()
            worker.stop()


def _throughput(
    url: str, records: bool, launches: int, db: str, log_dir: Path, queue_type: str = "classic"
) -> tuple[float, float]:
    """Launches per second, and the worker's CPU seconds per launch (steadier than the rate on a busy machine)."""
    names = _names()
    argv = ["--url", url, *flags(names), "--persister", db, "--task-queue-type", queue_type]
    if not records:
        argv.append("--no-records")
    worker = Worker(f"records-{'on' if records else 'off'}-{names['task_queue']}", "worker_pc.py", argv, log_dir)
    comm = process_comms.connect(url, task_queue_type=queue_type, **names)
    try:
        worker.wait_ready(30)
        ctl = process_comms.RemoteProcessThreadController(comm)
        ctl.launch_process(PcTrivial, init_kwargs={"inputs": {"a": 0, "b": 0}}).result(30)  # warm up
        cpu, started = process_cpu(worker.proc.pid) or 0.0, time.perf_counter()
        futures = [ctl.launch_process(PcTrivial, init_kwargs={"inputs": {"a": i, "b": 1}}) for i in range(launches)]
        for fut in futures:
            fut.result(120)
        elapsed, cpu = time.perf_counter() - started, (process_cpu(worker.proc.pid) or 0.0) - cpu
        return launches / elapsed, cpu / launches
    finally:
        comm.close()
        worker.stop()


def bench_launch(url: str, launches: int, rounds: int) -> dict[str, float]:
    """Launches per second (issued at once, each waiting for its outputs), records on vs off, ABBA rounds."""
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'launch.db'}"
        for round_ in range(rounds):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for records in order:
                (on if records else off).append(_throughput(url, records, launches, db, Path(tmp)))
    m_on, m_off = statistics.median(r for r, _ in on), statistics.median(r for r, _ in off)
    cpu_on, cpu_off = statistics.median(c for _, c in on), statistics.median(c for _, c in off)
    return {
        "records on /s": m_on,
        "records off /s": m_off,
        "overhead %": 100 * (m_off - m_on) / m_off,
        "worker CPU/launch on, ms": cpu_on * 1000,
        "worker CPU/launch off, ms": cpu_off * 1000,
        "worker CPU overhead %": 100 * (cpu_on - cpu_off) / cpu_off,
    }


def bench_costs(url: str, launches: int, rounds: int) -> list[tuple[str, str, float, str, float]]:
    """What records and a quorum task queue cost the launch rate (issue 16: no regression from issues 14
    and 15): ``(row, with, launches/s, without, launches/s)``, medians of ABBA rounds of ``launches``
    issued at once, each awaited for its outputs; the worker in its own OS process, a SQLite store."""
    kinds = {"records off": (False, "classic"), "records on": (True, "classic"), "quorum": (True, "quorum")}
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'costs.db'}"
        for round_ in range(rounds):
            order = list(kinds) if round_ % 2 == 0 else list(reversed(kinds))
            for kind in order:
                records, queue_type = kinds[kind]
                rates[kind].append(_throughput(url, records, launches, db, Path(tmp), queue_type)[0])
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    return [
        ("records (SQLite store), classic task queue", "on", median["records on"], "off", median["records off"]),
        ("task queue type, records on", "quorum", median["quorum"], "classic", median["records on"]),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--launches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    for name, value in bench_list(args.url, args.records, args.calls).items():
        print(f"{name:28s} {value * 1000:8.1f} ms")
    for name, value in bench_launch(args.url, args.launches, args.rounds).items():
        print(f"{name:28s} {value:8.2f}")


if __name__ == "__main__":
    main()
