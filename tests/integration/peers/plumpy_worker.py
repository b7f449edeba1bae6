"""A plumpy 0.26 + kiwipy 0.9 worker, wired like an AiiDA daemon worker.

``python -m tests.integration.peers.plumpy_worker '<json config>'``: a kiwipy ``RmqThreadCommunicator``
wrapped in a ``plumpy.LoopCommunicator`` for the worker's event loop, a ``plumpy.ProcessLauncher``
with a ``PicklePersister`` and a load context carrying that communicator and loop, subscribed to the
task queue. Prints ``READY`` when subscribed; exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

import kiwipy.rmq
import plumpy

from . import plumpy_procs


async def _tick() -> None:
    # Works around plumpy's lost wake-up (the `wakeup` row of benchmarks/workloads/thread_controllers.py
    # measures it): LoopCommunicator adds done callbacks to this loop's futures from the communicator thread,
    # which does not wake an idle loop.
    while True:
        await asyncio.sleep(0.02)


class DaemonLauncher(plumpy.ProcessLauncher):
    """plumpy's launcher; launched processes get the worker's communicator (see ``plumpy_procs``)."""

    async def _launch(self, *args: Any, **kwargs: Any) -> Any:
        token = plumpy_procs.LAUNCHING.set(True)
        try:
            return await super()._launch(*args, **kwargs)
        finally:
            plumpy_procs.LAUNCHING.reset(token)


def main() -> None:
    config = json.loads(sys.argv[1])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    comm = kiwipy.rmq.RmqThreadCommunicator.connect(
        connection_params={"url": config["url"]},
        message_exchange=config["message_exchange"],
        task_exchange=config["task_exchange"],
        task_queue=config["task_queue"],
        testing_mode=config.get("testing_mode", True),
    )
    loop_comm = plumpy.wrap_communicator(comm, loop)
    plumpy_procs.RUNTIME.update(communicator=loop_comm, loop=loop)
    persister = plumpy.PicklePersister(config["persister_dir"])
    launcher = DaemonLauncher(
        loop,
        persister=persister,
        load_context=plumpy.LoadSaveContext(communicator=loop_comm, loop=loop),
    )
    loop_comm.add_task_subscriber(launcher)

    def wait_for_stdin_close() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=wait_for_stdin_close, daemon=True).start()
    ticker = loop.create_task(_tick())
    print("READY", flush=True)
    try:
        loop.run_forever()
    finally:
        ticker.cancel()
        comm.close()


if __name__ == "__main__":
    main()
