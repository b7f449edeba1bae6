"""What a worker writes to its store about the processes it runs: their records, and its claims on the
persisted ones. Two sections: **records** (:class:`RecordWriter`) and **claims** (:class:`Claims`).

Process records (docs/fleet.md, "Who answers for a process"): what a worker writes about every process it
runs, persisted or not.

A record is a JSON-safe dict: pid, class, inputs, state history with timestamps, worker host and OS pid, progress,
outputs, exception (type, message, traceback) and the process's own log lines (:meth:`Recorded.report` and
:attr:`Recorded.logger`; ``Recorded`` lives in process.py, re-exported here). :class:`RecordWriter` writes them
through the worker's persister, coalescing the changes of a short window into one batch: on the loop when the store
can write at once (memory, a local SQLite file nobody else holds), else on the executor. A write never ends a
process, and one record never takes its batch with it: a failed batch is written record by record, and a record
whose write fails is tried again with back-off, then given up with an error naming its pid. The history is bounded
(:func:`.process.add_history`).

Claims: one worker runs a persisted pid at a time (RELIABILITY.md); :class:`Claims` takes, renews and takes
over the store's claims, and the comment at the head of its section gives the rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ..transports.loop import post
from ..wire.messages import Pid
from ._link import CommLink
from .persistence import ClaimHolder, Persister
from .process import CYCLE_EVENT, MAX_HISTORY, MAX_LOG_CHARS, MAX_LOG_LINES, Process, ProcessState, Recorded

__all__ = [
    "CYCLE_EVENT",
    "MAX_HISTORY",
    "MAX_LOG_CHARS",
    "MAX_LOG_LINES",
    "RECORD_END_DELAY",
    "RECORD_FLUSH_DELAY",
    "RECORD_MAX_AGE",
    "RECORD_MAX_COUNT",
    "RECORD_PRUNE_INTERVAL",
    "RECORD_RETRY_DELAY",
    "RECORD_RETRY_MAX_DELAY",
    "RECORD_WRITE_ATTEMPTS",
    "RENEW_INTERVAL_MAX",
    "TAKEOVER_GRACE",
    "WAIT_LOG_INTERVAL",
    "Claims",
    "Recorded",
    "RecordWriter",
]

LOGGER = logging.getLogger(__name__)

#: Seconds the changes of a running process are gathered before they are written in one batch.
RECORD_FLUSH_DELAY = 0.2
#: Seconds the end of a process waits for other ends to share its write (its reply does not wait: the
#: launcher keeps the process's route bound until its record is written).
RECORD_END_DELAY = 0.05
#: Seconds the records of ended processes are kept (30 days).
RECORD_MAX_AGE = 30 * 24 * 3600.0
#: Records kept at most (the oldest ended ones go first).
RECORD_MAX_COUNT = 100_000
#: Seconds between two prunes of the store by a worker.
RECORD_PRUNE_INTERVAL = 600.0
#: Tries of a record write before it is given up (logged as an error with the pids it loses).
RECORD_WRITE_ATTEMPTS = 6
#: Seconds before the first retry of a failed record write; doubled for each next one.
RECORD_RETRY_DELAY = 0.5
#: Longest wait between two tries of a record write (0.5 + 1 + 2 + 4 + 8 s: given up about 15 s after the first).
RECORD_RETRY_MAX_DELAY = 8.0


# -- records ------------------------------------------------------------------------------------------
class RecordWriter:
    """Writes the records of one launcher's processes through its persister.

    :meth:`touch` (from any thread) marks a process changed; its record is written once it has waited
    :data:`RECORD_FLUSH_DELAY` seconds, or within :data:`RECORD_END_DELAY` when ``urgent`` (an end), so a
    process that starts and ends within the delay is written once, not twice, and the ends of a busy
    worker share their writes. One write is in flight at a time and the next takes every record due
    meanwhile (a group commit), so a newer record is never overwritten by an older one, and :meth:`flush`
    waits only for the write that holds what was changed when it was called: never for a later batch of
    other processes' records. A batch goes to ``persister.save_records_nowait`` first, and to the
    executor only when that declines (a server, a file another writer holds, or a WAL checkpoint due).
    """

    def __init__(
        self,
        persister: Persister,
        loop: asyncio.AbstractEventLoop,
        delay: float = RECORD_FLUSH_DELAY,
        end_delay: float = RECORD_END_DELAY,
    ) -> None:
        self.persister = persister
        self.loop = loop
        self.delay = delay
        self.end_delay = end_delay
        #: Written by the next batch.
        self._due: dict[str, Recorded] = {}
        #: Changed, not urgent: due once ``delay`` has passed since the first change (loop time), oldest first.
        self._waiting: dict[str, tuple[Recorded, float]] = {}
        #: Resolved once the records now in ``_due`` are written (made when someone waits for them).
        self._next: asyncio.Future[None] | None = None
        #: Resolved once the write in flight is done.
        self._inflight: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Starts the write of the ends due (``end_delay`` after the first of them).
        self._soon: asyncio.TimerHandle | None = None
        #: Records whose write failed: pid -> (process, tries so far, the timer of the next try).
        self._retries: dict[str, tuple[Recorded, int, asyncio.TimerHandle]] = {}

    def touch(self, proc: Recorded, urgent: bool = False) -> None:
        """Mark ``proc``'s record changed (thread-safe)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._mark(proc, urgent)
        else:
            post(self.loop, self._mark, proc, urgent)  # not posted once the loop is gone: the worker is stopping

    def _mark(self, proc: Recorded, urgent: bool) -> None:
        key = str(proc.pid)
        if urgent:
            self._waiting.pop(key, None)
            self._due[key] = proc
            if self._writer is None and self._soon is None:  # a running writer takes it in its next batch
                self._soon = self.loop.call_later(self.end_delay, self._start)
        elif key not in self._due and key not in self._waiting:
            self._waiting[key] = (proc, self.loop.time())
            if self._timer is None:
                self._timer = self.loop.call_later(self.delay, self._promote)

    def _promote(self, everything: bool = False) -> None:
        """Make the waiting records that have waited ``delay`` (or all of them) due, and start a write."""
        self._timer = None
        now = self.loop.time()
        while self._waiting:
            key, (proc, since) = next(iter(self._waiting.items()))
            if not everything and now - since < self.delay:
                self._timer = self.loop.call_at(since + self.delay, self._promote)
                break
            del self._waiting[key]
            self._due.setdefault(key, proc)
        if self._due:
            self._start()

    def _start(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._writer is None:
            batches = self._write_batches()
            try:
                self._writer = self.loop.create_task(batches)
            except RuntimeError:  # the loop is closed: the launcher has stopped
                batches.close()

    def when_written(self, proc: Recorded, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once what changed in ``proc``'s record before this call is written
        (at once if nothing waits): no task of its own, so a launcher can wait for each ended process."""
        key = str(proc.pid)
        if key in self._waiting:
            self._due[key] = self._waiting.pop(key)[0]
            self._start()
        if key in self._due:
            if self._next is None:
                self._next = self.loop.create_future()
            self._next.add_done_callback(lambda _: callback())
        elif self._inflight is not None:
            self._inflight.add_done_callback(lambda _: callback())
        else:
            callback()

    async def flush(self) -> None:
        """Write every record changed before this call now, and those waiting to be tried again, and wait for it
        (failures are logged, not raised)."""
        for key in list(self._retries):
            self._retries[key][2].cancel()
            self._retry_due(key)
        if self._waiting:
            if self._timer is not None:
                self._timer.cancel()
            self._promote(everything=True)
        if self._due:
            if self._next is None:
                self._next = self.loop.create_future()
            done = self._next
            self._start()
        elif self._inflight is not None:
            done = self._inflight
        else:
            return
        await asyncio.shield(done)

    async def _write_batches(self) -> None:
        try:
            while self._due:
                procs, self._due = list(self._due.values()), {}
                done, self._next = self._next or self.loop.create_future(), None
                self._inflight = done
                try:
                    await self._write(procs)
                finally:
                    self._inflight = None
                    if not done.done():
                        done.set_result(None)
        finally:
            self._writer = None

    async def _write(self, procs: list[Recorded]) -> None:
        """Write ``procs``' records in one batch; if the batch fails, each on its own, so one record that cannot
        be stored never takes its neighbours with it; each that still fails is retried (:meth:`_retry_later`)."""
        records = [_record_of(proc) for proc in procs]
        try:
            await self._save(records)
            failed: list[tuple[Recorded, BaseException]] = []
        except Exception as whole:  # noqa: BLE001 - a lost record write must never end a process
            if len(records) == 1:
                failed = [(procs[0], whole)]
            else:
                failed = []
                for proc, record in zip(procs, records, strict=True):
                    try:
                        await self._save([record])
                    except Exception as one:  # noqa: BLE001 - this record alone: retried below
                        failed.append((proc, one))
        lost = {str(proc.pid) for proc, _ in failed}
        for proc in procs:
            key = str(proc.pid)
            if key not in lost and key in self._retries:
                self._retries.pop(key)[2].cancel()
        for proc, exc in failed:
            self._retry_later(proc, exc)

    async def _save(self, records: list[dict[str, object]]) -> None:
        if not self.persister.save_records_nowait(records):  # else written here: no thread hop
            await self.loop.run_in_executor(None, self.persister.save_records, records)

    def _retry_later(self, proc: Recorded, exc: BaseException) -> None:
        """Write ``proc``'s record again after a back-off (its record as it is then, never an older one); after
        :data:`RECORD_WRITE_ATTEMPTS` tries it is given up, logged as an error naming the pid."""
        key = str(proc.pid)
        _, tries, handle = self._retries.pop(key, (proc, 0, None))
        if handle is not None:
            handle.cancel()
        tries += 1
        if tries >= RECORD_WRITE_ATTEMPTS:
            LOGGER.error(
                "the record of process %s is lost: its write failed %d times (%s: %s); it stays as last written",
                proc.pid,
                tries,
                type(exc).__name__,
                exc,
            )
            return
        delay = min(RECORD_RETRY_DELAY * 2 ** (tries - 1), RECORD_RETRY_MAX_DELAY)
        LOGGER.warning(
            "could not write the record of process %s (try %d of %d, again in %.1f s): %s: %s",
            proc.pid,
            tries,
            RECORD_WRITE_ATTEMPTS,
            delay,
            type(exc).__name__,
            exc,
        )
        self._retries[key] = (proc, tries, self.loop.call_later(delay, self._retry_due, key))

    def _retry_due(self, key: str) -> None:
        entry = self._retries.get(key)
        if entry is not None and key not in self._due:
            self._waiting.pop(key, None)
            self._due[key] = entry[0]
            self._start()


def _record_of(proc: Recorded) -> dict[str, object]:
    """``proc``'s record; if building it raises, a stand-in with what is known, so the write still says where the
    process is (its state) rather than nothing."""
    try:
        return proc.record()
    except Exception as exc:  # noqa: BLE001 - a record that cannot be built must not take its batch with it
        state = proc.state.value if isinstance(proc.state, ProcessState) else None  # as far as it is known
        now = time.time()
        return {
            "pid": proc.pid,
            "class": f"{type(proc).__module__}:{type(proc).__qualname__}",
            "state_name": state,
            "status": f"its record could not be built: {type(exc).__name__}",
            "ctime": proc.ctime if isinstance(proc.ctime, (int, float)) else now,
            "mtime": now,
            "progress": {},
        }


# -- claims -------------------------------------------------------------------------------------------
# The launcher's claims on persisted processes: one worker runs a pid at a time (see RELIABILITY.md).
#
# A claim in the store names its owner, the owner's liveness token (an exclusive broker queue that dies
# with the owner's connection: ``AsyncCommunicator.liveness_token``) and when it was last renewed. A worker
# that finds a pid claimed by another owner asks the broker whether that owner's connection lives
# (RELIABILITY.md, "Faults": takeover in seconds):
#
# * alive: wait, however long (a slow worker is never doubled);
# * gone: take the claim over (a compare-and-swap on the holder as read) once the holder has also not
#   renewed it for :data:`TAKEOVER_GRACE` seconds. The token proves the connection, not the process: a
#   worker whose connection the broker closed keeps running and renewing until it reconnects, and must not
#   be doubled (tests/faults/test_worker_faults.py); a SIGKILLed one renews nothing;
# * unknown (no token, a store row from an older release, or the broker cannot tell now): the TTL rule, by
#   this worker's own ``claim_ttl`` counted from the holder's last renewal.
T = TypeVar("T")

CLAIMS_LOGGER = logging.getLogger("process_comms.worker.launcher")  # the worker's log lines keep their logger name

#: Longest interval between two renewals of a worker's claims (one statement renews them all): a claim
#: whose holder's connection is gone is taken over once it went unrenewed for longer than that.
RENEW_INTERVAL_MAX = 1.0
#: Seconds a claim of a holder whose connection is gone must go unrenewed before another worker takes it.
TAKEOVER_GRACE = 2.5 * RENEW_INTERVAL_MAX
#: Seconds between two looks at a claim whose holder's connection is gone (during the grace).
GRACE_POLL = 0.25
#: Seconds between two "waiting for worker" lines about the same pid (the first is logged at once).
WAIT_LOG_INTERVAL = 60.0


async def in_executor(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the default executor (a store's blocking call)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def token_of(link: CommLink | None) -> str | None:
    """This worker's liveness token on ``link`` (None without a communicator, or if it cannot get one)."""
    if link is None:
        return None
    try:
        return await link.liveness_token()
    except Exception:  # noqa: BLE001 - without a token, other workers fall back on the TTL rule
        CLAIMS_LOGGER.warning("no liveness token: other workers take over this worker's processes by claim TTL")
        return None


class Claims:
    """Takes, renews and takes over the store's claims on the persisted processes a launcher runs
    (``processes``: the launcher's own map of its live processes, shared)."""

    def __init__(self, persister: Persister, owner: str, claim_ttl: float, processes: dict[str, Process]) -> None:
        self.persister = persister
        self.owner = owner
        self.claim_ttl = claim_ttl
        self._processes = processes
        self._claimed: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None

    def holds(self, pid: Pid) -> bool:
        """Whether this launcher holds the claim on ``pid``."""
        return str(pid) in self._claimed

    def let_go(self, pid: Pid) -> None:
        """``pid``'s process ended here: give its claim up (on the executor, not waited for)."""
        if str(pid) in self._claimed:
            self._claimed.discard(str(pid))
            asyncio.get_running_loop().run_in_executor(None, self.persister.release, pid, self.owner)

    def _lapsed(self, holder: ClaimHolder) -> bool:
        """The TTL rule, by this worker's own ``claim_ttl`` from the holder's last renewal."""
        now = time.time()
        if holder.renewed_at is not None:
            return now - holder.renewed_at > self.claim_ttl
        return holder.expires_at < now  # a row from an older release: its owner's TTL

    async def claim(self, pid: Pid, link: CommLink | None = None) -> None:
        """Own ``pid``'s claim, waiting while another live worker holds it (it runs the process now)."""
        token = await token_of(link)
        gone: tuple[ClaimHolder, float] | None = None  # a holder whose connection is gone, and since when
        logged_at: float | None = None
        while True:
            holder = await in_executor(self.persister.try_claim, pid, self.owner, self.claim_ttl, token)
            if holder is None:
                break
            alive = await link.is_alive(holder.token) if link is not None else None
            now = time.monotonic()
            delay = self._renew_interval()
            if alive is False:
                if gone is None or gone[0] != holder:  # first seen, or renewed since: the grace starts again
                    gone = (holder, now)
                elif now - gone[1] >= TAKEOVER_GRACE and await self._take_over(pid, token, holder, "is gone"):
                    break
                delay = GRACE_POLL
                reason = "its connection is gone: taking its process over unless it renews its claim"
            elif alive is None and self._lapsed(holder):
                if await self._take_over(pid, token, holder, "let its claim lapse"):
                    break
                await asyncio.sleep(GRACE_POLL)  # another worker was first, or the holder renewed: look again
                continue
            else:
                gone = None
                reason = "it is alive" if alive else f"its claim lapses {self.claim_ttl:g} s after its last renewal"
            if logged_at is None or now - logged_at >= WAIT_LOG_INTERVAL:
                CLAIMS_LOGGER.info("process %s: waiting for worker %s, which runs it (%s)", pid, holder.owner, reason)
                logged_at = now
            await asyncio.sleep(delay)  # polling the shared store: see the module docstring
        self._claimed.add(str(pid))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_claims(), name="process-comms-claims")

    async def _take_over(self, pid: Pid, token: str | None, holder: ClaimHolder, why: str) -> bool:
        taken = await in_executor(self.persister.take_over, pid, self.owner, self.claim_ttl, token, holder)
        if taken:
            CLAIMS_LOGGER.info("process %s: took it over from worker %s, which %s", pid, holder.owner, why)
        return taken

    async def unclaim(self, pid: Pid) -> None:
        """Give the claim on ``pid`` up (its process did not start here)."""
        self._claimed.discard(str(pid))
        try:
            await in_executor(self.persister.release, pid, self.owner)
        except Exception:  # the claim then lapses by its TTL
            CLAIMS_LOGGER.warning("could not release the claim on process %s", pid, exc_info=True)

    def _renew_interval(self) -> float:
        """Seconds between renewals, and between looks at a claim while waiting (never a busy loop)."""
        return max(min(self.claim_ttl / 3, RENEW_INTERVAL_MAX), GRACE_POLL)

    async def _renew_claims(self) -> None:
        """Renew the claims of the persisted processes here (one store call for all), until there are none."""
        lost: set[str] = set()
        while self._claimed:
            await asyncio.sleep(self._renew_interval())
            pids = [proc.pid for key in list(self._claimed) if (proc := self._processes.get(key)) is not None]
            try:
                gone = await in_executor(self.persister.renew_claims, self.owner, self.claim_ttl, pids)
            except Exception:  # tried again at the next renewal
                CLAIMS_LOGGER.warning("could not renew the claims of this worker's processes", exc_info=True)
                continue
            for pid in gone:
                if str(pid) in self._claimed and str(pid) not in lost:  # once per pid, not at every renewal
                    CLAIMS_LOGGER.error("lost the claim on process %s to another worker", pid)
                    lost.add(str(pid))
            lost &= self._claimed
