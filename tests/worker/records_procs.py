"""Process classes of the record tests (importable by CLI workers: ``tests.worker.records_procs``); no tests here."""

from __future__ import annotations

from typing import Any

from process_comms.worker.process import Process


class Reporter(Process):
    """Writes to its log through ``report`` and its ``logger``, then finishes."""

    async def run(self) -> dict[str, Any]:
        self.report("starting the work")
        self.logger.info("step %d of %d", 1, 2)
        self.logger.debug("a debug line is not kept")
        await self.checkpoint(done=1)
        return {"reported": True}


class Sleeper(Process):
    """Waits until killed, having checkpointed its progress once."""

    async def run(self) -> dict[str, Any]:
        await self.checkpoint(done=1, of=3)
        await self.sleep(3600)
        return {}


class Broken(Process):
    """Excepts with a ZeroDivisionError."""

    async def run(self) -> dict[str, Any]:
        return {"ratio": 1 / 0}
