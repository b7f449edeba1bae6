"""``open_record_store``: a read-only view of a SQLite or PostgreSQL store; every write through it is refused by the
database itself (SQLite ``mode=ro``, PostgreSQL read-only transactions) and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.errors import PersistenceError, StoreUnavailable
from process_comms.worker.persistence import SqlPersister, open_record_store
from tests.worker.test_persistence import PG_URL, _pg_admin, pg_table  # noqa: F401 (fixture)

RECORD = {"pid": 7, "class": "m:C", "state_name": "finished", "ctime": 1.0, "mtime": 2.0, "inputs": {"x": 1}}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def written(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A store a writer filled (one record, one checkpoint, one claim): ``(url, table)``."""
    if request.param == "sqlite":
        url, table = f"sqlite:///{tmp_path}/s.db", "process_comms_checkpoints"
    else:
        url, table = PG_URL, request.getfixturevalue("pg_table")
    with SqlPersister(url, table) as writer:
        writer.save_records([RECORD])
        writer.save_bundle(7, {"a": 1})
        assert writer.claim(7, "w1", 60.0)
    yield url, table
    if request.param == "postgresql":
        with _pg_admin() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}_records")


def _everything(url: str, table: str) -> Any:
    with SqlPersister(url, table) as writer:  # a writer's view (it would create missing tables: they exist)
        return writer.list_records(), writer.load_record(7), writer.get_checkpoints(), writer.try_claim(7, "w1", 60.0)


def test_reads_and_refuses_every_write(written: tuple[str, str]) -> None:
    url, table = written
    with open_record_store(url, table, timeout=5) as store:
        assert [row["pid"] for row in store.list_records()] == [7]
        assert store.load_record(7) == RECORD and store.load_record(8) is None
    before = _everything(url, table)
    with open_record_store(url, table, timeout=5) as store:
        writes = [
            lambda: store.save_records([{**RECORD, "state_name": "killed"}]),
            lambda: store.save_records_nowait([{**RECORD, "pid": 9}]),
            lambda: store.prune_records(0.0, 0),
            lambda: store.save_bundle(8, {"b": 2}),
            lambda: store.delete_process_checkpoints(7),
            lambda: store.claim(7, "intruder", 60.0),
            lambda: store.release(7, "w1"),
        ]
        for write in writes:
            try:
                done = write()
            except PersistenceError as exc:
                assert "read" in str(exc).lower(), exc  # "readonly database" / "read-only transaction"
            else:
                assert done is False  # save_records_nowait: "not now"
    assert _everything(url, table) == before


def test_a_store_without_records_or_a_file_is_unavailable(tmp_path: Path) -> None:
    with SqlPersister(f"sqlite:///{tmp_path}/c.db", "x") as writer:  # another table name's tables
        writer.save_bundle(1, {})
    with pytest.raises(StoreUnavailable, match="has no process records"):
        open_record_store(f"sqlite:///{tmp_path}/c.db").list_records()
    with pytest.raises(StoreUnavailable, match="there is no store file"):
        open_record_store(f"sqlite:///{tmp_path}/none.db").load_record(1)
    assert not (tmp_path / "none.db").exists()
    for url in ("memory://", "sqlite://", "mysql://x/y"):
        with pytest.raises(StoreUnavailable):
            open_record_store(url).list_records()
    assert issubclass(process_comms.StoreUnavailable, process_comms.PersistenceError)


@pytest.mark.postgres
def test_a_postgres_table_that_is_not_there_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="has no process records"):
        open_record_store(PG_URL, f"pc_none_{uuid.uuid4().hex[:12]}", timeout=5).list_records()
