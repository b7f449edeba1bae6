"""Example processes shared by the examples (a worker loads them by name: ``examples.processes:Countdown``).

Workers in the examples allow only this module (``allowed_modules=["examples.processes"]``), so a
client can launch these classes and nothing else.
"""

from __future__ import annotations

from typing import Any

from process_comms import Process

__all__ = ["Countdown", "LongWaiter"]


class Countdown(Process):
    """Counts ``start`` steps down to zero, checkpointing after each step.

    Inputs: ``start`` (steps, default 5) and ``delay`` (seconds per step, default 0.05). A pause holds
    the process at its next checkpoint; a continued (or redelivered) process resumes from the step its
    last checkpoint recorded, and reports it as ``resumed_from`` in its outputs.
    """

    async def run(self) -> dict[str, Any]:
        start = int(self.inputs.get("start", 5))
        delay = float(self.inputs.get("delay", 0.05))
        resumed_from = int(self.progress.get("step", 0))
        for step in range(resumed_from, start):
            await self.sleep(delay)  # the "work" of one step (state "waiting" meanwhile)
            await self.checkpoint(step=step + 1, remaining=start - step - 1)
        return {"liftoff": True, "steps": start, "resumed_from": resumed_from}


class LongWaiter(Process):
    """Waits ``seconds`` (default one hour) in small slices, so pause, play and kill act at once."""

    async def run(self) -> dict[str, Any]:
        seconds = float(self.inputs.get("seconds", 3600.0))
        tick = float(self.inputs.get("tick", 0.05))
        waited = 0.0
        while waited < seconds:
            await self.sleep(tick)
            waited += tick
        return {"waited": round(waited, 3)}
