"""Soak: does a worker's memory stay flat over thousands of launches? (process records, RELIABILITY.md)

Starts one worker subprocess per store (``memory://`` with its default record budget, ``memory://`` with a
small one, and a SQLite file), launches ``--launches`` trivial processes through it (``--window`` in flight)
and prints the worker's resident memory (VmRSS, from /proc) every ``--every`` launches. A worker whose
records are bounded grows until its bound and then stays flat; one that keeps every record grows with each
launch. Not a test: run it by hand (about a minute a store on a quiet machine)::

    python -m benchmarks.soak_records --launches 5000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .common import DEFAULT_URL, ROOT

#: Launches before the first sample: imports, pools and caches warm up first.
WARMUP = 200


def rss_kib(pid: int) -> int:
    """The resident memory of ``pid`` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def serve(broker: str, persister: str, prefix: str) -> None:
    """The worker subprocess: run until stdin closes."""
    import process_comms

    names = {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.queue",
    }
    worker = process_comms.Worker(
        broker, persister=persister, allowed_modules=["benchmarks.bench_procs"], testing_mode=True, **names
    ).start()
    print("worker ready", flush=True)
    sys.stdin.read()
    worker.stop()


def soak(broker: str, persister: str, launches: int, every: int, window: int) -> list[tuple[int, int]]:
    """Launch through a fresh worker on ``persister``; ``(launches so far, worker RSS KiB)`` samples."""
    import process_comms
    from benchmarks.bench_procs import PcTrivial

    prefix = f"pcsoak-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak_records", "--serve", persister, "--prefix", prefix, "--url", broker],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        if proc.stdout.readline().strip() != "worker ready":
            raise RuntimeError(f"the worker on {persister} did not start")
        names = {"message_exchange": f"{prefix}.messages", "task_exchange": f"{prefix}.tasks"}
        samples: list[tuple[int, int]] = []
        with process_comms.connect(broker, testing_mode=True, task_queue=f"{prefix}.queue", **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            done = 0
            for total in (WARMUP, launches):
                while done < total:
                    batch = [
                        ctl.launch_process(PcTrivial, init_kwargs={"inputs": {}})
                        for _ in range(min(window, total - done))
                    ]
                    for future in batch:
                        future.result(120)
                    done += len(batch)
                    if total == launches and done % every < len(batch):
                        samples.append((done, rss_kib(proc.pid)))
                if total == WARMUP:
                    samples.append((0, rss_kib(proc.pid)))
                    done = 0
        return samples
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--launches", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--window", type=int, default=25, help="launches in flight")
    parser.add_argument("--store", action="append", help="persister URL(s) (default: three, see the docstring)")
    parser.add_argument("--serve", metavar="PERSISTER", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.serve, args.prefix)
        return
    with tempfile.TemporaryDirectory() as tmp:
        stores = args.store or ["memory://", "memory://?max_record_bytes=2000000", f"sqlite:///{tmp}/soak.db"]
        for store in stores:
            started = time.monotonic()
            try:
                samples = soak(args.url, store, args.launches, args.every, args.window)
            except Exception as exc:  # noqa: BLE001 - a store the code under test does not know: say so, go on
                print(f"{store}: failed: {type(exc).__name__}: {exc}")
                continue
            first = samples[0][1]
            print(f"{store} ({time.monotonic() - started:.0f} s); worker RSS after {WARMUP} warm-up launches, then:")
            for count, kib in samples:
                print(f"  {count:>6} launches  {kib / 1024:7.1f} MiB  ({(kib - first) / 1024:+6.1f} MiB)")
            tail = [sample for sample in samples if sample[0] >= args.launches * 3 // 5]
            if len(tail) > 1:
                per = (tail[-1][1] - tail[0][1]) * 1024 / max(tail[-1][0] - tail[0][0], 1)
                print(f"  from {tail[0][0]} to {tail[-1][0]} launches: {per:+.0f} bytes of RSS per launch")


if __name__ == "__main__":
    main()
