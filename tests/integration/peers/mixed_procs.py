"""Processes deployed under one name to both kinds of worker of a mixed fleet (tests/integration/test_mixed_fleet.py).

A fleet part-way through a migration runs the same process classes on plumpy workers and on ours, so the same
class name (``tests.integration.peers.mixed_procs:Add``) must load on either. This module makes it so: in the
plumpy worker peer (``plumpy_worker.py`` run as ``__main__``) its classes are plumpy processes, anywhere else
(our worker peer, the test's own interpreter) process_comms ones. Each says which engine ran it.
"""

from __future__ import annotations

import sys
from typing import Any

import plumpy

from process_comms.worker.process import Process

from .plumpy_procs import _WorkerProcess

#: The engine of this interpreter: "plumpy" in the plumpy worker peer, "process_comms" elsewhere.
ENGINE = (
    "plumpy" if getattr(sys.modules["__main__"].__spec__, "name", "").endswith(".plumpy_worker") else "process_comms"
)

if ENGINE == "plumpy":

    class Add(_WorkerProcess):
        """Finishes at once with ``{'sum': a + b, 'engine': 'plumpy'}``."""

        def run(self) -> None:
            self.out("sum", self.inputs["a"] + self.inputs["b"])
            self.out("engine", ENGINE)

    class Idle(_WorkerProcess):
        """Waits (plumpy ``Wait``) until played on or killed."""

        def run(self) -> Any:
            return plumpy.Wait(self.after, msg="idle")

        def after(self) -> None:
            self.out("engine", ENGINE)

else:

    class Add(Process):  # type: ignore[no-redef]
        """Finishes at once with ``{'sum': a + b, 'engine': 'process_comms'}``."""

        async def run(self) -> dict[str, Any]:
            return {"sum": self.inputs["a"] + self.inputs["b"], "engine": ENGINE}

    class Idle(Process):  # type: ignore[no-redef]
        """Waits an hour in the ``waiting`` state, in one piece (as plumpy's ``Wait``)."""

        async def run(self) -> dict[str, Any]:
            await self.sleep(3600.0)
            return {"engine": ENGINE}
