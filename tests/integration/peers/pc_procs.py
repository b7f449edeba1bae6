"""process_comms processes for the interop tests (besides ``tests.procs``).

``tests.procs.Waiter`` sleeps in 50 ms slices and so broadcasts ~40 state changes a second; every
communicator on the exchange receives them, which floods kiwipy listeners (their loop runs in asyncio
debug mode under ``testing_mode``) on a busy machine. :class:`Idle` waits in one piece instead, like a
plumpy process in ``Wait``: one ``running -> waiting`` transition, then nothing until played or killed.
"""

from __future__ import annotations

from typing import Any

from process_comms.worker.process import Process


class Idle(Process):
    """Waits ``seconds`` (default an hour) in the ``waiting`` state."""

    async def run(self) -> dict[str, Any]:
        await self.sleep(float(self.inputs.get("seconds", 3600)))
        return {"slept": True}
