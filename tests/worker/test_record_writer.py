"""RecordWriter (process_comms/worker/records.py): group commits, and a flush that waits only for its own batch."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from process_comms.worker.persistence import InMemoryPersister
from process_comms.worker.records import RecordWriter

BOUND = 10.0  # seconds any wait here may take


class GatedStore(InMemoryPersister):
    """A store whose thread-path writes each wait for the test to let them through."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[threading.Event] = []
        self.started: list[list[str]] = []
        self.changed = threading.Condition()

    def save_records_nowait(self, records: Sequence[dict[str, Any]]) -> bool:
        return False  # always the thread path

    def save_records(self, records: Sequence[dict[str, Any]]) -> None:
        gate = threading.Event()
        with self.changed:
            self.gates.append(gate)
            self.started.append([r["state_name"] for r in records])
            self.changed.notify_all()
        assert gate.wait(BOUND), "the test never let this write through"
        super().save_records(records)


class Proc:
    def __init__(self, name: str) -> None:
        self.pid = uuid.uuid4()
        self.name = name

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "state_name": self.name, "ctime": 1.0, "mtime": 1.0}


def test_a_flush_waits_for_the_write_holding_its_record_not_for_the_next_batch() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = GatedStore()
        writer = RecordWriter(store, loop, delay=60.0)
        first, second = Proc("first"), Proc("second")
        writer.touch(first, urgent=True)
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 1), BOUND)
        waiting_for_first = asyncio.ensure_future(writer.flush())  # its record is in the write in flight
        await asyncio.sleep(0)  # one loop step: the flush starts (and finds nothing else changed)
        writer.touch(second, urgent=True)  # the next batch, queued behind it
        store.gates[0].set()
        await asyncio.wait_for(waiting_for_first, BOUND)  # before: it went on to write (and wait for) `second`
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 2), BOUND)
        assert store.started == [["first"], ["second"]]
        assert store.load_record(first.pid) is not None and store.load_record(second.pid) is None
        waiting_for_second = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0)
        assert not waiting_for_second.done()
        store.gates[1].set()
        await asyncio.wait_for(waiting_for_second, BOUND)
        assert store.load_record(second.pid) is not None

    asyncio.run(main())


def test_changes_made_during_a_write_go_together_in_the_next_one() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = GatedStore()
        writer = RecordWriter(store, loop, delay=60.0)
        writer.touch(Proc("a"), urgent=True)
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 1), BOUND)
        for name in ("b", "c", "d"):
            writer.touch(Proc(name), urgent=True)
        store.gates[0].set()
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 2), BOUND)
        store.gates[1].set()
        await asyncio.wait_for(writer.flush(), BOUND)
        assert store.started == [["a"], ["b", "c", "d"]]  # one write for the three, not three

    asyncio.run(main())


def _wait_writes(store: GatedStore, count: int) -> None:
    with store.changed:
        assert store.changed.wait_for(lambda: len(store.started) >= count, BOUND)


def test_a_record_not_urgent_waits_its_delay_even_while_other_ends_are_written() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = GatedStore()
        writer = RecordWriter(store, loop, delay=60.0)
        short = Proc("running")
        writer.touch(short)  # started: not urgent
        writer.touch(Proc("other ended"), urgent=True)
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 1), BOUND)
        store.gates[0].set()
        short.name = "finished"
        writer.touch(short, urgent=True)  # it ended within the delay: one write of it, not two
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 2), BOUND)
        store.gates[1].set()
        await asyncio.wait_for(writer.flush(), BOUND)
        assert store.started == [["other ended"], ["finished"]]  # before: [["running", "other ended"], ...]

    asyncio.run(main())


def test_when_written_calls_back_after_the_write_holding_what_changed_before_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = GatedStore()
        writer = RecordWriter(store, loop, delay=60.0)
        called: list[str] = []
        proc, other = Proc("waiting"), Proc("other")
        writer.when_written(proc, lambda: called.append("nothing waited"))
        assert called == ["nothing waited"]
        writer.touch(proc)  # not urgent: when_written makes it due now, and only it
        writer.touch(other)
        writer.when_written(proc, lambda: called.append(str(store.load_record(proc.pid))))
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 1), BOUND)
        assert len(called) == 1  # the write is held: no call yet
        store.gates[0].set()
        flushing = asyncio.ensure_future(writer.flush())  # writes `other`, still waiting its delay, now
        await asyncio.wait_for(loop.run_in_executor(None, _wait_writes, store, 2), BOUND)
        store.gates[1].set()
        await asyncio.wait_for(flushing, BOUND)
        assert len(called) == 2 and "waiting" in called[1]  # called once the record was in the store
        assert store.started == [["waiting"], ["other"]]  # the flush wrote the one still waiting its delay

    asyncio.run(main())
