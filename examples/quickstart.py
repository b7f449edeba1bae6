"""Quickstart on the embedded default: no broker needed.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
from typing import Any

import process_comms
from process_comms import Process, ProcessLauncher


class Countdown(Process):
    """Counts down, checkpointing each step (a pause holds it at the next checkpoint)."""

    async def run(self) -> dict[str, Any]:
        for n in range(self.inputs["start"], 0, -1):
            await asyncio.sleep(0.01)
            await self.checkpoint(remaining=n - 1)
        return {"liftoff": True}


def main() -> None:
    with process_comms.connect() as comm, ProcessLauncher() as worker:  # embedded: no broker
        comm.add_task_subscriber(worker)
        controller = process_comms.RemoteProcessThreadController(comm)

        outputs = controller.launch_process(Countdown, init_kwargs={"inputs": {"start": 3}}).result(timeout=10)
        print("outputs:", outputs)

        pid = controller.launch_process(Countdown, init_kwargs={"inputs": {"start": 1000}}, nowait=True).result(10)
        print("paused:", controller.pause_process(pid, "coffee break").result(10))
        print("status:", controller.get_status(pid).result(10)["status"])
        print("played:", controller.play_process(pid).result(10))
        print("killed:", controller.kill_process(pid, "enough").result(10))


if __name__ == "__main__":
    main()
