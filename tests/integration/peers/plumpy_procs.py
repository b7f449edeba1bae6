"""plumpy processes run by the plumpy worker peer (``plumpy_worker.py``).

``plumpy.ProcessLauncher`` hands its load context (communicator + loop) only to processes it
*continues* from a checkpoint (``Bundle.unbundle(load_context)`` -> ``Process.load_instance_state``),
as on an AiiDA daemon. A *launched* process gets no communicator from plumpy (so it would be
unreachable); the worker marks its launches with :data:`LAUNCHING` and these classes then take the
communicator in their constructor, as plumpy's own tests and AiiDA's runner-made processes do.
*Created* processes stay without one (they are only checkpointed), exactly as in plumpy.
"""

from __future__ import annotations

import contextvars
from typing import Any

import plumpy

#: Set by the worker: the ``plumpy.LoopCommunicator`` and the event loop processes run on.
RUNTIME: dict[str, Any] = {"communicator": None, "loop": None}
#: True while the worker's launcher instantiates a process for a ``launch`` task.
LAUNCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("LAUNCHING", default=False)


class _WorkerProcess(plumpy.Process):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if LAUNCHING.get() and RUNTIME["communicator"] is not None:
            kwargs.setdefault("communicator", RUNTIME["communicator"])
        if RUNTIME["loop"] is not None:
            kwargs.setdefault("loop", RUNTIME["loop"])
        super().__init__(*args, **kwargs)

    @classmethod
    def define(cls, spec: Any) -> None:
        super().define(spec)
        spec.inputs.dynamic = True
        spec.outputs.dynamic = True


class AddProc(_WorkerProcess):
    """Finishes at once with ``{'sum': a + b}``."""

    def run(self) -> None:
        self.out("sum", self.inputs["a"] + self.inputs["b"])


class WaitProc(_WorkerProcess):
    """Waits (plumpy ``Wait`` command) until killed; never finishes by itself."""

    def run(self) -> Any:
        return plumpy.Wait(self.after, msg="waiting for a kill")

    def after(self) -> None:
        self.out("default", 5)


class Strange:
    """A value that PyYAML's default dumper writes as ``!!python/object``."""

    def __init__(self) -> None:
        self.payload = 42


class StrangeOutputProc(_WorkerProcess):
    """Finishes with an output that only an unsafe YAML loader could rebuild."""

    def run(self) -> None:
        self.out("strange", Strange())
