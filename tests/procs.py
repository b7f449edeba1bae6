"""Process classes the tests launch (importable by workers in other OS processes: ``tests.procs``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from process_comms.worker.process import Process


class Add(Process):
    """Finishes at once with the sum of its inputs ``a`` and ``b``."""

    async def run(self) -> dict[str, Any]:
        return {"sum": self.inputs["a"] + self.inputs["b"]}


class BlockingAdd(Process):
    """A plain (threaded) run."""

    def run(self) -> dict[str, Any]:
        return {"sum": self.inputs["a"] + self.inputs["b"]}


class Waiter(Process):
    """Waits in the ``waiting`` state until killed or ``seconds`` pass (pause holds it afterwards)."""

    async def run(self) -> dict[str, Any]:
        await self.sleep(float(self.inputs.get("seconds", 3600)))
        return {"waited": True}


class Fails(Process):
    """Excepts with a ValueError."""

    async def run(self) -> dict[str, Any]:
        raise ValueError("this process always fails")


class Steps(Process):
    """Counts ``n`` steps, checkpointing after each; records every step it runs in ``log`` (a file)."""

    async def run(self) -> dict[str, Any]:
        n = int(self.inputs["n"])
        delay = float(self.inputs.get("delay", 0.0))
        log = self.inputs.get("log")
        start = int(self.progress.get("done", 0))
        for step in range(start, n):
            if log:
                with open(log, "a") as fh:
                    fh.write(f"{self.pid} {step} {os.getpid()}\n")
            if delay:
                await asyncio.sleep(delay)
            await self.checkpoint(done=step + 1)
        return {"steps": n, "resumed_from": start}


class Cleanup(Process):
    """Waits forever; on kill its ``finally`` writes a marker file."""

    async def run(self) -> dict[str, Any]:
        try:
            while True:
                await self.sleep(0.05)
        finally:
            Path(self.inputs["marker"]).write_text("cleaned up")


class Ticker(Process):
    """Goes waiting <-> running every 50 ms until killed (a steady stream of state changes)."""

    async def run(self) -> dict[str, Any]:
        while True:
            await self.sleep(0.05)


class ManyInts(Process):
    """Finishes with ``n`` ints as its outputs (tests/wire/test_large_outputs.py: as large as a workflow's may be)."""

    async def run(self) -> dict[str, Any]:
        return {"values": list(range(int(self.inputs["n"])))}
