"""A process stopped in the turn it was started, before its run took a step, still ends as asked.

A task cancelled before its first step never runs its coroutine, so the run's own handlers never saw the kill:
the kill waited for ever, the process stayed ``created`` and its ``wait_done`` never resolved (found when a
route's bind failed at once and killed its process, worker/launcher.py ``Routes``; a ``kill_all`` during a
launch could do the same). ``Process._stop_run`` leaves such a run to see the request at its first step.
"""

from __future__ import annotations

import asyncio

import pytest

from process_comms import KilledError, ProcessLost
from process_comms.wire.types import ProcessState
from tests.procs import Waiter

T = 5.0


async def _started() -> tuple[Waiter, asyncio.Future[dict[str, object]]]:
    proc = Waiter(inputs={})
    return proc, proc.start()  # no await after it: the run's task has not taken its first step


@pytest.mark.parametrize("steps", [0, 1], ids=["before its first step", "at its first pause point"])
def test_a_kill_kills(steps: int) -> None:
    async def main() -> None:
        proc, done = await _started()
        for _ in range(steps):
            await asyncio.sleep(0)  # the run's first step: up to its first pause point
        assert await asyncio.wait_for(proc.kill("at once"), T)  # before its first step: waited for ever
        assert proc.state is ProcessState.KILLED and proc.killed_message == "at once"
        with pytest.raises(KilledError):
            await asyncio.wait_for(done, T)

    asyncio.run(main())


def test_an_abandon_before_the_first_step_ends_it_lost() -> None:
    async def main() -> None:
        proc, done = await _started()
        await asyncio.wait_for(proc.abandon("its worker stopped"), T)
        assert proc.state is ProcessState.EXCEPTED and proc.status == "lost: its worker stopped"
        with pytest.raises(ProcessLost):
            await asyncio.wait_for(done, T)  # before: never resolved

    asyncio.run(main())


def test_a_suspend_before_the_first_step_settles_the_run() -> None:
    async def main() -> None:
        proc, done = await _started()
        await asyncio.wait_for(proc.suspend(), T)
        assert proc.state is ProcessState.CREATED  # not run here: the next worker continues it
        with pytest.raises(Exception, match="suspended"):
            await asyncio.wait_for(done, T)  # before: never resolved, so its launcher never let it go

    asyncio.run(main())
