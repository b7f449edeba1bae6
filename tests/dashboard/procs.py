"""Process classes of the dashboard tests (importable by CLI workers: ``tests.dashboard.procs``); no tests here."""

from __future__ import annotations

from typing import Any

from process_comms.worker.process import Process


class Stepper(Process):
    """Counts ``n`` steps of ``delay`` seconds (waiting, then running), checkpointing ``done`` of ``of``."""

    async def run(self) -> dict[str, Any]:
        n, delay = int(self.inputs.get("n", 10)), float(self.inputs.get("delay", 0.2))
        self.report(f"counting {n} steps")
        for step in range(int(self.progress.get("done", 0)), n):
            await self.sleep(delay)
            await self.checkpoint(done=step + 1, of=n)
        return {"steps": n}


class Holder(Process):
    """Checkpoints a quarter of its work, says so in its log, then waits until killed."""

    async def run(self) -> dict[str, Any]:
        await self.checkpoint(done=1, of=4)
        self.report("holding until killed")
        await self.sleep(3600)
        return {}
