"""The launcher's claims on persisted processes: one worker runs a pid at a time (see RELIABILITY.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..wire.messages import Pid

if TYPE_CHECKING:
    from .process import Process

__all__ = ["ClaimsMixin"]

LOGGER = logging.getLogger("process_comms.worker.launcher")


class ClaimsMixin:
    """Takes and renews the store's claims on the persisted processes a launcher runs."""

    persister: Any
    owner: str
    claim_ttl: float
    _claimed: set[str]
    _renewer: asyncio.Task[None] | None
    _processes: dict[str, Process]

    async def _claim(self, pid: Pid) -> None:
        """Own ``pid``'s claim, waiting while another live worker holds it (it runs the process now)."""
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, self.persister.claim, pid, self.owner, self.claim_ttl):
            LOGGER.info("process %s runs on another worker: waiting for it to end or for its claim to lapse", pid)
            await asyncio.sleep(self.claim_ttl / 3)  # polling the shared store: the other worker renews at ttl/3
        self._claimed.add(str(pid))
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew_claims(), name="process-comms-claims")

    async def _renew_claims(self) -> None:
        """Renew the claims of the persisted processes running here, until there are none."""
        loop = asyncio.get_running_loop()
        while self._claimed:
            await asyncio.sleep(self.claim_ttl / 3)
            for key in list(self._claimed):
                proc = self._processes.get(key)
                if proc is None:
                    continue
                try:
                    if not await loop.run_in_executor(None, self.persister.claim, proc.pid, self.owner, self.claim_ttl):
                        LOGGER.error("lost the claim on process %s to another worker", proc.pid)
                except Exception:
                    LOGGER.warning("could not renew the claim on process %s", proc.pid, exc_info=True)
