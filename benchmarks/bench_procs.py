"""Process classes the benchmarks launch, one trivial and one waiting class per library.

Imported as ``benchmarks.bench_procs`` by the benchmark client (to name the classes in task bodies) and
by the worker subprocesses (to instantiate them), so both must run with the repository root on
``sys.path``.
"""

from __future__ import annotations

from typing import Any

import plumpy

import process_comms

# -- process_comms ------------------------------------------------------------------------------


class PcTrivial(process_comms.Process):
    """Returns at once."""

    async def run(self) -> dict[str, Any]:
        return {"ok": True}


class PcWaiter(process_comms.Process):
    """Waits in the ``waiting`` state until killed; pause takes hold at each ``sleep``.

    ``inputs["tick"]`` (default 0.5 s) is how long each ``sleep`` lasts; every tick is two state
    transitions, each broadcast as ``state_changed.*``.
    """

    async def run(self) -> dict[str, Any]:
        tick = float(self.inputs.get("tick", 0.5))
        while True:
            await self.sleep(tick)


# -- plumpy -------------------------------------------------------------------------------------

#: The communicator every plumpy process gets, set by ``worker_plumpy.py``: what an AiiDA runner does
#: (a bare ``plumpy.ProcessLauncher`` creates processes without one, so they could not be controlled).
PLUMPY_COMMUNICATOR: Any = None


class _PlumpyWired(plumpy.Process):
    """A plumpy process that defaults its communicator to the worker's, as AiiDA's processes do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("communicator") is None:
            kwargs["communicator"] = PLUMPY_COMMUNICATOR
        super().__init__(*args, **kwargs)


class PlumpyTrivial(_PlumpyWired):
    """Returns at once with one output."""

    @classmethod
    def define(cls, spec: Any) -> None:
        super().define(spec)
        spec.outputs.dynamic = True

    def run(self) -> None:
        self.out("ok", True)


class PlumpyWaiter(_PlumpyWired):
    """Waits (``plumpy.Wait``, the ``WAITING`` state) until killed; nothing ever resumes it."""

    def run(self) -> Any:
        return plumpy.Wait(self.after_wait, "waiting until killed")

    def after_wait(self) -> None:
        return None
