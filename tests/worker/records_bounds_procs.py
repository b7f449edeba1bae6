"""Process classes of tests/worker/test_records_bounds.py (importable by workers); no tests here."""

from __future__ import annotations

from typing import Any

from process_comms.worker.process import Process

#: Digits of a huge int: past Python's 4,300-digit limit, so ``repr`` raises (the codecs write it in hex).
HUGE_DIGITS = 5000


class Unshowable:
    """A value no codec can hold and whose ``repr`` raises, as ``repr`` of a set of huge ints does."""

    def __repr__(self) -> str:
        return repr({10**HUGE_DIGITS})  # ValueError: Exceeds the limit (4300 digits) for integer string conversion


class HugeOutput(Process):
    """Finishes with a value that neither a codec nor ``repr`` can show, beside one that is fine."""

    async def run(self) -> dict[str, Any]:
        return {"huge": Unshowable(), "fine": 1}


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
