"""The WorkChains `.ci/aiida` runs on an AiiDA daemon over process_comms: a parent with a finished child and a live one.

``Parent`` first runs ``add`` (a calcfunction: a child that has finished when the parent is killed, as in
aiida-core's ``Process.kill`` case of a child no longer reachable), then submits an
``ArithmeticAddCalculation`` that sleeps on the local computer (a child that is alive and must be killed
through its scheduler), and waits for it.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.calculations.arithmetic.add import ArithmeticAddCalculation
from aiida.engine import ToContext, WorkChain, calcfunction


@calcfunction
def add(x: orm.Int, y: orm.Int) -> orm.Int:
    """A child that finishes at once."""
    return orm.Int(x.value + y.value)


class Quick(WorkChain):
    """One step that runs ``add``: a process for ``verdi process repair`` and ``tasks revive`` to bring back."""

    @classmethod
    def define(cls, spec: Any) -> None:
        super().define(spec)
        spec.outline(cls.add_two)
        spec.output("sum", valid_type=orm.Int)

    def add_two(self) -> None:
        self.out("sum", add(orm.Int(2), orm.Int(3)))


class Parent(WorkChain):
    """A fast calcfunction child, then a CalcJob child that sleeps ``sleep`` seconds."""

    @classmethod
    def define(cls, spec: Any) -> None:
        super().define(spec)
        spec.input("code", valid_type=orm.AbstractCode)
        spec.input("sleep", valid_type=orm.Int)
        spec.outline(cls.fast, cls.slow, cls.finish)
        spec.output("sum", valid_type=orm.Int)

    def fast(self) -> None:
        self.ctx.sum = add(orm.Int(1), orm.Int(2))

    def slow(self) -> Any:
        resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        options = {"resources": resources, "sleep": self.inputs.sleep.value, "max_wallclock_seconds": 900}
        inputs = {"code": self.inputs.code, "x": orm.Int(3), "y": orm.Int(4), "metadata": {"options": options}}
        return ToContext(slow=self.submit(ArithmeticAddCalculation, **inputs))

    def finish(self) -> None:
        self.out("sum", self.ctx.sum)
