"""A store written by a real CLI worker that then stopped, in SQLite or PostgreSQL, and a fingerprint of what it
holds: the shared setup of tests/cli/test_store.py and tests/dashboard/test_store.py (no tests here)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from process_comms.worker.persistence import DEFAULT_TABLE
from tests.cli.test_commands import (  # noqa: F401 (rmq_cleanup: a fixture)
    CLI,
    READY_TIMEOUT,
    ROOT,
    RUN_TIMEOUT,
    STOP_TIMEOUT,
    LineReader,
    _env,
    _global_options,
    rmq_cleanup,
)
from tests.conftest import POSTGRES_URL

#: Where the record tests' process classes live (a CLI worker imports them).
PROCS = "tests.worker.records_procs"


@dataclass
class StoppedFleet:
    """A store (URL) that a worker wrote, the pids of its processes by class name, and how to fingerprint it."""

    url: str
    pids: dict[str, str]
    fingerprint: Callable[[], Any]


def _cli(broker_url: str, names: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *_global_options(broker_url, names), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_env(),
    )


def start_cli_worker(broker_url: str, names: dict[str, str], url: str, err_path: Path) -> subprocess.Popen[str]:
    """A CLI worker on the store at ``url`` allowed :data:`PROCS`, its stderr in ``err_path``; its stdout a pipe
    (read ``worker ready`` from it with a ``LineReader``)."""
    with open(err_path, "w") as err:
        return subprocess.Popen(
            [*CLI, *_global_options(broker_url, names), "worker", "--persister", url, "--allow", PROCS],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
        )


def fill_store(url: str, broker_url: str, names: dict[str, str], tmp: Path) -> dict[str, str]:
    """Run a CLI worker on ``url``, run a process that finishes and one that excepts, list them while the worker
    is up, stop the worker (SIGTERM, exit 0); the pids by class (``Reporter``, ``Broken``)."""
    err_path = tmp / f"worker-{uuid.uuid4().hex[:6]}.err"
    proc = start_cli_worker(broker_url, names, url, err_path)
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout).next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        finished = _cli(broker_url, names, "--json", "launch", f"{PROCS}:Reporter")
        assert json.loads(finished.stdout) == {"reported": True}, finished.stderr
        assert _cli(broker_url, names, "launch", f"{PROCS}:Broken").returncode == 7  # excepted: EXIT_REMOTE
        listed = _cli(broker_url, names, "--json", "list")
        assert listed.returncode == 0, listed.stderr
        pids = {row["class"].rpartition(":")[2]: str(row["pid"]) for row in json.loads(listed.stdout)}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    assert set(pids) == {"Reporter", "Broken"}
    return pids


def sqlite_fingerprint(path: Path) -> Callable[[], Any]:
    """The database file's bytes (as a digest) and modification time."""

    def fingerprint() -> Any:
        return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns

    return fingerprint


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)


def pg_fingerprint(schema: str) -> Callable[[], Any]:
    """Every row of the store's three tables (records, checkpoints, claims) in the schema, as text."""

    def fingerprint() -> Any:
        with _pg_admin() as conn:
            found = []
            for suffix, order in (("_records", "pid_key"), ("", "pid_key, tag"), ("_claims", "pid_key")):
                rows = conn.execute(f'SELECT * FROM "{schema}".{DEFAULT_TABLE}{suffix} ORDER BY {order}').fetchall()
                found.append([[str(value) for value in row] for row in rows])
            return found

    return fingerprint


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of its own on the test server (the worker's tables land there), dropped after the test."""
    schema = f"pc_store_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_url(schema: str) -> str:
    """The test server's URL with ``schema`` first on the search path (libpq's ``options``)."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stopped_fleet(
    request: pytest.FixtureRequest,
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
    tmp_path: Path,
) -> StoppedFleet:
    """A SQLite or PostgreSQL store written by a CLI worker that has stopped: no worker is up now."""
    if request.param == "sqlite":
        path = tmp_path / "w.db"
        url, fingerprint = f"sqlite:///{path}", sqlite_fingerprint(path)
    else:
        schema = request.getfixturevalue("pg_schema")
        url, fingerprint = pg_url(schema), pg_fingerprint(schema)
    return StoppedFleet(url, fill_store(url, broker_url, names, tmp_path), fingerprint)
