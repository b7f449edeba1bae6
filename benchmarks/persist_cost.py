"""What checkpointing every process costs: launch rate with and without ``persist`` on a durable store.

A ``process_comms.Worker`` on a SQLite file (records on, as a fleet worker runs) in its own OS process;
this client launches ``n`` short processes at a time (issued, then awaited) with ``persist=False`` and
``persist=True``, alternating, and prints launches per second of each (the median of ``--rounds``).
Used for the decision in docs/fleet.md ("Who answers for a process"): whether a worker with a durable
store should checkpoint every process unless the caller opts out.

Usage::

    PYTHONPATH=$PWD /work/venv/bin/python benchmarks/persist_cost.py --n 300 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import process_comms
from benchmarks.common import DEFAULT_URL, flags, names
from benchmarks.workers import Worker


def rate(ctl: process_comms.RemoteProcessThreadController, n: int, persist: bool, timeout: float) -> float:
    """Launches per second of ``n`` processes issued at once and awaited (their outputs)."""
    started = time.perf_counter()
    futures = [
        ctl.launch_process("benchmarks.bench_procs:PcTrivial", init_kwargs={"inputs": {"x": i}}, persist=persist)
        for i in range(n)
    ]
    for fut in futures:
        fut.result(timeout)
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--n", type=int, default=300, help="launches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    exchange_names = names(uuid.uuid4().hex[:8], "persist")
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/store.db"
        worker = Worker(
            "pc",
            "worker_pc.py",
            ["--url", args.url, *flags(exchange_names), "--persister", store, "--fleet-worker"],
            Path(tmp),
        )
        try:
            worker.wait_ready(30)
            comm = process_comms.connect(args.url, testing_mode=True, **exchange_names)
            with process_comms.RemoteProcessThreadController(comm) as ctl:
                rate(ctl, 20, True, args.timeout)  # warm up both paths
                rate(ctl, 20, False, args.timeout)
                rates: dict[bool, list[float]] = {False: [], True: []}
                for round_ in range(args.rounds):
                    for persist in (False, True) if round_ % 2 == 0 else (True, False):
                        rates[persist].append(rate(ctl, args.n, persist, args.timeout))
        finally:
            worker.stop()
    without, with_ = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"launch rate, {args.n} issued then awaited, SQLite store, records on (median of {args.rounds}):")
    print(f"  persist=False: {without:.0f}/s  {[round(r) for r in rates[False]]}")
    print(f"  persist=True:  {with_:.0f}/s  {[round(r) for r in rates[True]]}  ({with_ / without:.0%} of the rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
