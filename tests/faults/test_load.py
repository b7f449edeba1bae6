"""Load: 1,000 live processes on one worker under status/pause/play traffic from 16 threads."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.wire.messages import is_terminal, state_name
from tests.procs import Waiter

from ._support import controller

pytestmark = pytest.mark.slow

PROCESSES = 1000
THREADS = 16
SECONDS = 8.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _ended(status: dict[str, Any]) -> bool:
    """A status of a process that has ended (from its record once no worker holds it: issue 14)."""
    return is_terminal(status.get("state_name") or state_name(status.get("state")))


def test_thousand_processes_under_sixteen_threads_of_traffic(prefix: str, workers: Any, record_property: Any) -> None:
    worker = workers()
    with controller(prefix) as ctl:
        launches = [ctl.launch_process(Waiter, init_kwargs={"inputs": {}}, nowait=True) for _ in range(PROCESSES)]
        pids = [f.result(120) for f in launches]
        assert len(set(pids)) == PROCESSES
        counts = {"ok": 0, "lost": 0, "crossed": 0, "error": 0}
        lock = threading.Lock()
        stop = time.monotonic() + SECONDS
        rss_samples: list[int] = []

        def traffic(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                pid = rng.choice(pids)
                action = rng.choice(("status", "pause", "play"))
                call = {"status": ctl.get_status, "pause": ctl.pause_process, "play": ctl.play_process}[action]
                fut = call(pid, timeout=20)
                try:
                    result = fut.result(30)
                except process_comms.TimeoutError:
                    key = "lost"
                except process_comms.ProcessCommsError:
                    key = "error"
                else:
                    key = "ok" if action != "status" or result["pid"] == pid else "crossed"
                    if action != "status" and result is not True:
                        key = "crossed"
                with lock:
                    counts[key] += 1

        threads = [threading.Thread(target=traffic, args=(n,), name=f"load-{n}") for n in range(THREADS)]
        for thread in threads:
            thread.start()
        while time.monotonic() < stop:
            rss_samples.append(rss_kb(worker.proc.pid))
            time.sleep(0.5)  # sampling interval of a measurement, not synchronisation
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        total = sum(counts.values())
        record_property("load_counts", counts)
        record_property("load_rss_kb", (rss_samples[0], rss_samples[-1]))
        print(
            f"\nload: {total} calls in {SECONDS:.0f} s from {THREADS} threads on {PROCESSES} processes: {counts}; "
            f"worker RSS {rss_samples[0]} -> {max(rss_samples)} kB"
        )
        assert counts["lost"] == 0 and counts["crossed"] == 0 and counts["error"] == 0, counts
        assert total > 1000
        assert max(rss_samples) < rss_samples[0] * 1.3 + 20_000, rss_samples  # flat: no growth with traffic
        ctl.kill_all("load test over")
        deadline = time.monotonic() + 60
        alive = set(pids)
        while alive and time.monotonic() < deadline:  # every process ends: its record says killed
            outcomes = process_comms.wait_all({pid: ctl.get_status(pid, timeout=10) for pid in alive}, timeout=20)
            alive = {pid for pid, out in outcomes.items() if not (isinstance(out, dict) and _ended(out))}
        assert not alive, f"{len(alive)} processes survived kill_all"
