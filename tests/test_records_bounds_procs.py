"""Process classes of tests/test_records_bounds.py (importable by workers); no tests here."""

from __future__ import annotations

from typing import Any

from process_comms.worker.process import Process

#: Digits of :class:`HugeOutput`'s output: past Python's 4,300-digit limit, so neither JSON nor ``repr`` can show it.
HUGE_DIGITS = 5000


class HugeOutput(Process):
    """Finishes with an int whose ``repr`` raises (``ValueError: Exceeds the limit ... for integer string``)."""

    async def run(self) -> dict[str, Any]:
        return {"huge": 10**HUGE_DIGITS, "fine": 1}


class Napper(Process):
    """Sleeps ``inputs['naps']`` times (each a running -> waiting -> running pair in its history), then finishes."""

    async def run(self) -> dict[str, Any]:
        for _ in range(int(self.inputs["naps"])):
            await self.sleep(0.001)
        return {"napped": self.inputs["naps"]}


class Bloated(Process):
    """Reports ``inputs['size']`` characters of progress, then waits until killed."""

    async def run(self) -> dict[str, Any]:
        await self.checkpoint(blob="x" * int(self.inputs["size"]), done=1)
        await self.sleep(3600)
        return {}
