"""Takeover in seconds, not the claim TTL (issue 15): a claim records its owner's liveness token.

The store's compare-and-swap and migration on every persister; the launcher's rules (alive: wait, gone and
unrenewed: take over, unknown: this worker's own TTL) in one interpreter on both back ends; and the figures
with workers in their own OS processes: a SIGKILLed worker's process continues elsewhere within 5 s, a
SIGSTOPped one (its connection alive) is not doubled.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.worker.persistence import InMemoryPersister, Persister, SqlPersister
from process_comms.worker.records import TAKEOVER_GRACE
from tests.faults._support import controller, prefix, workers
from tests.procs import Steps
from tests.waiting import wait_until
from tests.worker.test_persistence import PG_URL, _pg_admin, persister, pg_table

__all__ = ["persister", "pg_table", "prefix", "workers"]  # fixtures

T = 20.0


def steps_logged(log: Path) -> list[tuple[str, int, int]]:
    """``(pid, step, OS pid of the worker)`` per line that tests.procs.Steps wrote."""
    if not log.exists():
        return []
    return [(a, int(b), int(c)) for a, b, c in (line.split() for line in log.read_text().splitlines() if line.strip())]


# -- the store: compare-and-swap, renewal, migration -------------------------------------------------------------
def test_of_two_workers_taking_over_one_claim_only_one_wins(persister: Persister) -> None:
    pid = uuid.uuid4()
    assert persister.try_claim(pid, "dead", 30.0, "token-dead") is None
    holder = persister.try_claim(pid, "b", 30.0, "token-b")
    assert holder is not None and (holder.owner, holder.token) == ("dead", "token-dead")
    assert persister.take_over(pid, "b", 30.0, "token-b", holder) is True
    assert persister.take_over(pid, "c", 30.0, "token-c", holder) is False  # the holder it read is gone
    now_held = persister.try_claim(pid, "c", 30.0, "token-c")
    assert now_held is not None and (now_held.owner, now_held.token) == ("b", "token-b")


def test_a_renewed_claim_is_not_taken_over_with_a_stale_read(persister: Persister) -> None:
    pid = 7
    assert persister.try_claim(pid, "a", 30.0, "token-a") is None
    stale = persister.try_claim(pid, "b", 30.0, None)
    assert stale is not None
    wait_until(lambda: time.time() > stale.expires_at - 30.0 + 0.01, T, "the clock to move")
    assert persister.renew_claims("a", 30.0, [pid]) == []
    assert persister.take_over(pid, "b", 30.0, None, stale) is False


def test_renewal_reports_the_claims_an_owner_lost(persister: Persister) -> None:
    assert persister.try_claim(1, "a", 30.0, None) is None
    assert persister.try_claim(2, "a", 30.0, None) is None
    holder = persister.try_claim(2, "b", 30.0, None)
    assert holder is not None and persister.take_over(2, "b", 30.0, None, holder)
    assert persister.renew_claims("a", 30.0, [1, 2]) == [2]
    persister.release(1, "a")
    assert persister.try_claim(1, "b", 30.0, None) is None


_OLD_CLAIMS = (
    "CREATE TABLE {table}_claims (pid_key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
)


def _check_migrated(store: SqlPersister) -> None:
    holder = store.try_claim(1, "new", 30.0, "token-new")
    assert holder is not None and (holder.owner, holder.token, holder.renewed_at) == ("old", None, None)
    assert store.take_over(1, "new", 30.0, "token-new", holder)
    assert store.try_claim(1, "new", 30.0, "token-new") is None


def test_an_sqlite_claims_table_of_an_older_release_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(_OLD_CLAIMS.format(table="process_comms_checkpoints"))
        conn.execute("INSERT INTO process_comms_checkpoints_claims VALUES ('1', 'old', 1e18)")
    conn.close()
    with SqlPersister(f"sqlite:///{path}") as store:
        _check_migrated(store)
    with SqlPersister(f"sqlite:///{path}") as again:  # opened once more: nothing left to add
        assert again.try_claim(2, "x", 30.0, None) is None


def test_a_postgres_claims_table_of_an_older_release_gets_the_new_columns(pg_table: str) -> None:
    with _pg_admin() as conn:
        conn.execute(_OLD_CLAIMS.format(table=pg_table))
        conn.execute(f"INSERT INTO {pg_table}_claims VALUES ('1', 'old', 1e18)")
    try:
        with SqlPersister(PG_URL, table=pg_table) as store:
            _check_migrated(store)
    finally:
        with _pg_admin() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {pg_table}_records")


# -- the launcher's rules, in one interpreter ------------------------------------------------------------------
def _waiting_lines(caplog: pytest.LogCaptureFixture, pid: Any) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if "waiting for worker" in r.getMessage() and str(pid) in r.getMessage()
    ]


def _steps_checkpoint(store: Persister, log: Path) -> uuid.UUID:
    """A persisted Steps process that has not run yet, whose claim another worker holds."""
    proc = Steps(inputs={"n": 2, "log": str(log)})
    store.save_checkpoint(proc)
    assert isinstance(proc.pid, uuid.UUID)
    return proc.pid


def test_a_live_holder_is_waited_for_past_the_ttl_and_a_gone_one_is_taken_over(
    comm_factory: Any, backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="process_comms.worker.launcher")
    store, log = InMemoryPersister(), tmp_path / "steps.log"
    worker_comm, client = comm_factory(), comm_factory()
    # the embedded bus is one communicator: the holder needs one of its own (its token dies with it)
    holder_comm = process_comms.connect(None) if backend == "embedded" else comm_factory()
    token = holder_comm.loop_thread.run_sync(lambda: holder_comm.core.liveness_token(), timeout=T)
    pid = _steps_checkpoint(store, log)
    assert store.try_claim(pid, "holder", 3600.0, token) is None  # a live worker that renews nothing
    worker = process_comms.Worker(communicator=worker_comm, persister=store, allowed_modules=["tests"], claim_ttl=0.3)
    with worker:
        ctl = process_comms.RemoteProcessThreadController(client)
        future = ctl.continue_process(pid)
        wait_until(lambda: _waiting_lines(caplog, pid), T, "the worker to wait for the holder")
        lapsed = time.monotonic() + 10 * 0.3 + TAKEOVER_GRACE  # the TTL rule would have taken it long before
        wait_until(lambda: time.monotonic() > lapsed, T, "a window well past the waiting worker's TTL")
        assert not steps_logged(log) and not future.done(), "a live worker's process was doubled"
        assert len(_waiting_lines(caplog, pid)) == 1, "one line per pid while waiting, not one per poll"
        holder_comm.close()  # like a SIGKILL: its connection is gone and it renews nothing
        started = time.monotonic()
        assert future.result(T) == {"steps": 2, "resumed_from": 0}
        taken_after = time.monotonic() - started
    holder_comm.close()
    print(f"taken over {taken_after:.2f} s after the holder's connection closed")
    assert taken_after < TAKEOVER_GRACE + 2.0
    assert any("took it over from worker holder" in r.getMessage() for r in caplog.records)


def test_without_a_token_the_waiting_workers_own_claim_ttl_counts(comm_factory: Any, tmp_path: Path) -> None:
    """Before issue 15 the holder's TTL decided (--claim-ttl on the new worker did not shorten the wait): an
    hour here. Now the waiting worker counts its own claim_ttl from the holder's last renewal."""
    store, log = InMemoryPersister(), tmp_path / "steps.log"
    worker_comm, client = comm_factory(), comm_factory()
    pid = _steps_checkpoint(store, log)
    assert store.try_claim(pid, "older-worker", 3600.0, None) is None  # no token: liveness unknown
    claimed_at = time.monotonic()
    with process_comms.Worker(communicator=worker_comm, persister=store, allowed_modules=["tests"], claim_ttl=1.0):
        outputs = process_comms.RemoteProcessThreadController(client).continue_process(pid).result(T)
        waited = time.monotonic() - claimed_at
    assert outputs == {"steps": 2, "resumed_from": 0}
    assert 0.9 < waited < 1.0 + 5.0, waited


# -- workers in their own OS processes ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sigkilled_workers_process_continues_elsewhere_within_5_s(prefix: str, workers: Any, tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    fleet = ("--heartbeat", "2", "--claim-ttl", "30")  # the default TTL: only liveness makes it fast
    first = workers(*fleet)
    with controller(prefix) as ctl:
        future = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 80, "delay": 0.05, "log": str(log)}}, persist=True
        )
        wait_until(lambda: len(steps_logged(log)) >= 5, T, "some steps on the first worker")
        second = workers(*fleet)
        killed_at = time.monotonic()
        first.sigkill()
        wait_until(lambda: any(w == second.proc.pid for *_, w in steps_logged(log)), T, "a step on the second worker")
        takeover = time.monotonic() - killed_at
        outputs = future.result(60)
    print(f"takeover after SIGKILL: {takeover:.2f} s (heartbeat 2 s, claim TTL 30 s)")
    assert takeover <= 5.0, f"took {takeover:.2f} s"
    assert outputs["steps"] == 80 and outputs["resumed_from"] > 0
    steps = [step for _, step, _ in steps_logged(log)]
    assert sorted(set(steps)) == list(range(80)) and len(steps) - len(set(steps)) <= 1


def _renewed_at(db: Path) -> float:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT renewed_at FROM process_comms_checkpoints_claims").fetchall()
    conn.close()
    return min(float(r[0]) for r in rows) if rows else time.time()


@pytest.mark.slow
def test_a_stopped_worker_whose_connection_lives_is_not_doubled(prefix: str, workers: Any, tmp_path: Path) -> None:
    log, second_log = tmp_path / "steps.log", tmp_path / "second.log"
    first = workers("--prefetch", "1", "--claim-ttl", "2")  # one slot: the continue below goes to the second
    with controller(prefix) as ctl:
        launched = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 30, "delay": 0.1, "log": str(log)}}, persist=True
        )
        wait_until(lambda: len(steps_logged(log)) >= 3, T, "some steps on the first worker")
        pid = uuid.UUID(steps_logged(log)[0][0])
        second = workers("--claim-ttl", "2", "--log-level", "INFO", log_path=second_log)
        os.kill(first.proc.pid, signal.SIGSTOP)
        try:
            continued = ctl.continue_process(pid)
            wait_until(lambda: "waiting for worker" in second_log.read_text(), T, "the second worker to wait")
            # well past both workers' claim TTL and the takeover grace: the TTL rule would have doubled it
            db = tmp_path / "checkpoints.db"
            wait_until(lambda: time.time() - _renewed_at(db) > 2 * 2.0 + TAKEOVER_GRACE, T, "the claim to go stale")
            assert not any(w == second.proc.pid for *_, w in steps_logged(log)), "the stopped worker was doubled"
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        assert launched.result(60)["steps"] == 30
        assert continued.result(60)["steps"] == 30  # the second worker found it finished
    steps = [step for _, step, _ in steps_logged(log)]
    assert sorted(steps) == list(range(30)), "a step ran twice"
    assert {w for *_, w in steps_logged(log)} == {first.proc.pid}
    assert second_log.read_text().count("waiting for worker") == 1
