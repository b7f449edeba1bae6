"""Benchmark process_comms against plumpy 0.26 + kiwipy 0.9 on the same RabbitMQ broker.

Each library gets a worker in a separate OS process (``worker_pc.py``, ``worker_plumpy.py``; the floors'
are ``worker_raw.py``, an echo, and ``worker_raw_launch.py``, one launch's messages) on its own, unique
exchanges and task queue. The client side runs here:
process_comms' ``RemoteProcessThreadController`` / ``RemoteProcessController`` and plumpy's
``RemoteProcessThreadController`` / ``RemoteProcessController`` on a ``kiwipy.rmq.RmqThreadCommunicator``.
The libraries run interleaved: one-at-a-time workloads in ABBA rounds, concurrent ones alternating who
goes first. Every wait is bounded; a library that cannot finish a workload is reported as ``failed``.

Usage::

    /tmp/venv/bin/python benchmarks/run.py                     # full scale, writes benchmarks/results.md
    /tmp/venv/bin/python benchmarks/run.py --scale 0.1         # quick smoke run
    /tmp/venv/bin/python benchmarks/run.py --only a,b,g        # some workloads (a-h, g.l, costs, codec, facade)
    /tmp/venv/bin/python benchmarks/run.py --quick             # issue 26's rows only, in a few minutes
    /tmp/venv/bin/python benchmarks/run.py --quick --repeat 3  # the same 3 times: median and range per ratio
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

# ``python benchmarks/run.py`` puts benchmarks/ on sys.path, not the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ALL_WORKLOADS, DEFAULT_URL, HERE, PC, flags, names, short_error
from benchmarks.measure import IDLE_CPU_RATE, Result, measure_idle_cpu
from benchmarks.report import build_tables, environment, render, repeat_table
from benchmarks.sides import PcSide, PlumpySide, Side
from benchmarks.workers import Worker
from benchmarks.workloads.in_process import bench_codec, bench_facade
from benchmarks.workloads.records import bench_costs
from benchmarks.workloads.thread_controllers import Bench

#: ``--quick``: the workloads of issue 26's targets table, at this scale (a run of a few minutes).
QUICK_WORKLOADS = ("a", "c", "d", "e", "f", "g", "g.l", "h")
QUICK_SCALE = 0.5
#: Workloads with no comparison row (no ratio to take a median of): run in the first repeat only.
ONCE = ("costs", "codec", "facade", "wakeup")


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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="issue 26's rows only (a, c-h; the floors g and g.l) at half scale unless --only/--scale say otherwise",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the selected workloads N times on the same workers; print each ratio's median and range",
    )
    parser.add_argument("--no-plumpy", action="store_true", help="skip plumpy (process_comms and the floor only)")
    parser.add_argument("--output", default=str(HERE / "results.md"), help="markdown output ('' for none)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.quick:
        args.only = args.only or ",".join(QUICK_WORKLOADS)
        if args.scale == 1.0:
            args.scale = QUICK_SCALE
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
    cost_rows: list[tuple[str, str, float, str, float]] = []
    failures: list[str] = []
    raw_exchange = f"pcbench-{run_id}-raw.messages" if {"a", "g"} & set(args.selected) else None
    launch_floor_names = names(run_id, "rawlaunch") if "g.l" in args.selected else None
    runs: list[list[Result]] = []
    t_begin = time.perf_counter()
    try:
        pc_names, pl_names = names(run_id, "pc"), names(run_id, "plumpy")
        if broker:
            workers.append(
                Worker(
                    "worker_pc",
                    "worker_pc.py",
                    ["--url", args.url, "--codec", args.codec, *flags(pc_names)],
                    log_dir,
                )
            )
            if not args.no_plumpy:
                extra = ["--waker-ms", str(args.plumpy_waker_ms)]
                if args.plumpy_asyncio_debug:
                    extra.append("--asyncio-debug")
                workers.append(
                    Worker("worker_plumpy", "worker_plumpy.py", ["--url", args.url, *extra, *flags(pl_names)], log_dir)
                )
        if raw_exchange:
            workers.append(
                Worker("worker_raw", "worker_raw.py", ["--url", args.url, "--exchange", raw_exchange], log_dir)
            )
        if launch_floor_names is not None:
            workers.append(
                Worker(
                    "worker_raw_launch",
                    "worker_raw_launch.py",
                    ["--url", args.url, *flags(launch_floor_names)],
                    log_dir,
                )
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
        bench.launch_floor_names = launch_floor_names
        bench.launch_floor_pid = by_name.get("worker_raw_launch")
        if broker:
            bench.setup()
        for repeat in range(1, args.repeat + 1):
            if args.repeat > 1:
                bench.log(f"repeat {repeat} of {args.repeat}")
            bench.results = []
            for workload in args.selected:
                if repeat > 1 and workload in ONCE:
                    continue
                try:
                    if workload == "codec":
                        bench.log("codec: encode + decode per message")
                        codec_rows = bench_codec(bench.n("codec"))
                    elif workload == "facade":
                        bench.log("facade: thread facade overhead on the embedded default (no broker)")
                        facade_rows = bench_facade(bench.n("facade"))
                    elif workload == "costs":
                        bench.log("costs: launch rate with records on/off and a quorum/classic task queue")
                        cost_rows = bench_costs(args.url, bench.n("costs"), max(2, args.rounds * 2))
                    else:
                        getattr(bench, "w_" + workload.replace(".", "_"))()
                except Exception as exc:  # noqa: BLE001 - one workload failing must not stop the others
                    where = f" (repeat {repeat})" if args.repeat > 1 else ""
                    failures.append(f"{workload}{where}: {short_error(exc)}")
                    bench.log(f"workload {workload} failed: {short_error(exc)}")
            runs.append(bench.results)
        if broker:
            bench.teardown()
        results = bench.results
    finally:
        for side in sides:
            side.close()
        for worker in workers:
            worker.stop()
    load_end = os.getloadavg()

    if len(runs) > 1:
        tables = [build_tables(run) for run in runs]
        comparison = "\n\n".join(
            [repeat_table(runs)]
            + [f"### Repeat {i} of {len(runs)}\n\n{comp}" for i, (_, comp, _) in enumerate(tables, 1)]
        )
        detail = "\n\n".join(f"### Repeat {i} of {len(runs)}\n\n{det}" for i, (det, _, _) in enumerate(tables, 1))
    else:
        detail, comparison, _verdicts = build_tables(results)
    doc = render(
        args,
        env,
        run_id,
        detail,
        comparison,
        codec_rows,
        facade_rows,
        failures,
        load_start,
        load_end,
        t_begin,
        cost_rows,
    )
    print()
    print(doc)
    if args.output:
        Path(args.output).write_text(doc + "\n")
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
