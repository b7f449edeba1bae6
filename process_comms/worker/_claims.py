"""The launcher's claims on persisted processes: one worker runs a pid at a time (see RELIABILITY.md).

A claim in the store names its owner, the owner's liveness token (an exclusive broker queue that dies
with the owner's connection: ``AsyncCommunicator.liveness_token``) and when it was last renewed. A worker
that finds a pid claimed by another owner asks the broker whether that owner's connection lives
(RELIABILITY.md, "Faults": takeover in seconds):

* alive: wait, however long (a slow worker is never doubled);
* gone: take the claim over (a compare-and-swap on the holder as read) once the holder has also not
  renewed it for :data:`TAKEOVER_GRACE` seconds. The token proves the connection, not the process: a
  worker whose connection the broker closed keeps running and renewing until it reconnects, and must not
  be doubled (tests/faults/test_worker_faults.py); a SIGKILLed one renews nothing;
* unknown (no token, a store row from an older release, or the broker cannot tell now): the TTL rule, by
  this worker's own ``claim_ttl`` counted from the holder's last renewal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ..wire.messages import Pid
from ._link import ALIVE_CACHE, CommLink
from .persistence import ClaimHolder, Persister
from .process import Process

__all__ = ["ALIVE_CACHE", "Claims", "RENEW_INTERVAL_MAX", "TAKEOVER_GRACE", "WAIT_LOG_INTERVAL"]

T = TypeVar("T")

LOGGER = logging.getLogger("process_comms.worker.launcher")

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
        LOGGER.warning("no liveness token: other workers take over this worker's processes by claim TTL")
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
                LOGGER.info("process %s: waiting for worker %s, which runs it (%s)", pid, holder.owner, reason)
                logged_at = now
            await asyncio.sleep(delay)  # polling the shared store: see the module docstring
        self._claimed.add(str(pid))
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_claims(), name="process-comms-claims")

    async def _take_over(self, pid: Pid, token: str | None, holder: ClaimHolder, why: str) -> bool:
        taken = await in_executor(self.persister.take_over, pid, self.owner, self.claim_ttl, token, holder)
        if taken:
            LOGGER.info("process %s: took it over from worker %s, which %s", pid, holder.owner, why)
        return taken

    async def unclaim(self, pid: Pid) -> None:
        """Give the claim on ``pid`` up (its process did not start here)."""
        self._claimed.discard(str(pid))
        try:
            await in_executor(self.persister.release, pid, self.owner)
        except Exception:  # the claim then lapses by its TTL
            LOGGER.warning("could not release the claim on process %s", pid, exc_info=True)

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
                LOGGER.warning("could not renew the claims of this worker's processes", exc_info=True)
                continue
            for pid in gone:
                if str(pid) in self._claimed and str(pid) not in lost:  # once per pid, not at every renewal
                    LOGGER.error("lost the claim on process %s to another worker", pid)
                    lost.add(str(pid))
            lost &= self._claimed
