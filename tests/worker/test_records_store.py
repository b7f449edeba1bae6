"""Process records in every store (issue 14): memory, SQLite and PostgreSQL keep, list and prune them alike."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from process_comms.worker.persistence import InMemoryPersister, Persister, SqlPersister
from process_comms.worker.persistence._records import CUT_KEY, SUMMARY_ERROR_CHARS
from tests.worker.test_persistence import PG_URL, pg_table  # noqa: F401 (fixture)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def persister(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Persister]:
    if request.param == "memory":
        store: Persister = InMemoryPersister()
    elif request.param == "sqlite":
        store = SqlPersister(f"sqlite:///{tmp_path}/records.db")
    else:
        store = SqlPersister(PG_URL, table=request.getfixturevalue("pg_table"))
    yield store
    store.close()


def record(state: str = "finished", ctime: float | None = None, **extra: Any) -> dict[str, Any]:
    now = time.time() if ctime is None else ctime
    return {
        "pid": uuid.uuid4(),
        "class": "tests.procs:Add",
        "inputs": {"a": 1, "b": 2},
        "state_name": state,
        "paused": False,
        "status": None,
        "progress": {},
        "outputs": {"sum": 3} if state == "finished" else None,
        "history": [{"event": "created", "time": now}, {"event": state, "time": now}],
        "host": {"hostname": "h", "pid": 1},
        "ctime": now,
        "mtime": now,
        **extra,
    }


def test_a_record_round_trips_and_keeps_its_first_inputs(persister: Persister) -> None:
    assert persister.keeps_records
    first = record("running")
    persister.save_records([first])
    later = {**first, "state_name": "finished", "inputs": {"changed": True}, "outputs": {"sum": 3}}
    persister.save_records([later])
    got = persister.load_record(first["pid"])
    assert got is not None
    assert got["state_name"] == "finished" and got["outputs"] == {"sum": 3}
    assert got["inputs"] == {"a": 1, "b": 2} and got["pid"] == first["pid"]
    assert persister.load_record(uuid.uuid4()) is None


def test_a_value_json_cannot_hold_is_kept_as_its_repr(persister: Persister) -> None:
    odd = record(outputs={"when": object(), "n": 1})
    persister.save_records([odd])
    got = persister.load_record(odd["pid"])
    # only the value JSON cannot hold is replaced: the values beside it are kept
    assert got is not None and "!!unencodable" in got["outputs"]["when"] and got["outputs"]["n"] == 1


def test_list_is_newest_first_and_filters(persister: Persister) -> None:
    base = time.time() - 100
    rows = [record("finished", base + i) for i in range(5)]
    failed = {"type": "ValueError", "message": "m" * 5000, "traceback": "t" * 5000}
    rows.append(record("excepted", base + 10, exception=failed, **{"class": "tests.procs:Fails"}))
    persister.save_records(rows)
    listed = persister.list_records()
    assert [r["ctime"] for r in listed] == sorted((r["ctime"] for r in rows), reverse=True)
    summary_keys = {"pid", "class", "state_name", "paused", "status", "progress", "host", "ctime", "mtime"}
    assert set(listed[0]) == summary_keys | {"worker", "token", "label", "persisted", "error"}  # worker, token: holder
    [excepted] = persister.list_records(state="excepted")
    assert excepted["error"] == "ValueError: " + "m" * (SUMMARY_ERROR_CHARS - 15) + "..."  # bounded, no traceback
    assert listed[-1]["error"] is None
    assert len(persister.list_records(limit=2)) == 2
    assert len(persister.list_records(since=base + 3)) == 3  # ctimes base+3, base+4, base+10
    assert [r["class"] for r in persister.list_records(class_name="tests.procs:Fails")] == ["tests.procs:Fails"]


def test_a_listing_filters_on_the_record_as_saved_not_on_the_callers_dict_changed_since(persister: Persister) -> None:
    """The memory store keeps the fields it filters on beside the record's texts (no longer a decoded summary):
    they are the saved record's, whatever the writer does to its dict next, as in a database's columns."""
    saved = record("running", label="batch-a")
    persister.save_records([saved])
    saved.update(state_name="finished", label="batch-b", ctime=0.0, mtime=0.0)  # the writer's next state, unsaved
    assert [r["pid"] for r in persister.list_records(states=["running"], label="batch-a")] == [saved["pid"]]
    assert persister.list_records(state="finished") == [] and persister.list_records(label="batch-b") == []
    persister.prune_records(max_age=1.0, max_count=0)  # live as saved: kept, whatever ctime and mtime say now
    assert persister.load_record(saved["pid"]) is not None


def test_list_before_gives_the_next_page_and_a_summary_carries_bounded_progress(persister: Persister) -> None:
    base = time.time() - 100
    rows = [record("finished", base + i, progress={"blob": "x" * 50_000, "done": i}) for i in range(5)]
    persister.save_records(rows)
    assert [r["ctime"] for r in persister.list_records(before=base + 2)] == [base + 2, base + 1, base]
    listed = persister.list_records()
    assert [r["progress"]["done"] for r in listed] == [4, 3, 2, 1, 0]
    assert all("blob" not in r["progress"] and r["progress"][CUT_KEY] > 50_000 for r in listed)
    assert len(persister.load_record(rows[0]["pid"])["progress"]["blob"]) == 50_000  # the record has the whole


def test_prune_by_age_and_count_keeps_live_records(persister: Persister) -> None:
    old = time.time() - 1000
    persister.save_records([record("finished", old), record("running", old)])
    persister.save_records([record("finished", time.time() - i) for i in range(5)])
    persister.prune_records(max_age=500, max_count=100)
    states = sorted(r["state_name"] for r in persister.list_records())
    assert states == ["finished"] * 5 + ["running"]  # the old ended one went; the old live one stays
    persister.prune_records(max_age=500, max_count=3)
    assert len([r for r in persister.list_records() if r["state_name"] == "finished"]) <= 3
    assert any(r["state_name"] == "running" for r in persister.list_records())


def test_a_large_batch_with_a_pid_twice_keeps_the_last_of_each(persister: Persister) -> None:
    # over 100 rows is more than one multi-row upsert: they go in one transaction; a pid given twice in one
    # multi-row upsert fails on PostgreSQL ("ON CONFLICT DO UPDATE command cannot affect row a second time")
    rows = [record("running", time.time() - 300 + i) for i in range(250)]
    twice = {**rows[7], "state_name": "finished", "outputs": {"sum": 3}}
    persister.save_records([*rows, twice])
    assert len(persister.list_records(limit=1000)) == 250
    got = persister.load_record(rows[7]["pid"])
    assert got is not None and got["state_name"] == "finished"
    assert all(persister.load_record(r["pid"]) is not None for r in rows[::50])


def test_save_records_nowait_writes_a_local_store_and_declines_a_server(persister: Persister) -> None:
    row = record()
    done = persister.save_records_nowait([row])
    is_server = isinstance(persister, SqlPersister) and persister.url.startswith("postgresql")
    assert done is (not is_server)
    assert (persister.load_record(row["pid"]) is None) is is_server


def test_save_records_nowait_never_waits_for_another_writer_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    store = SqlPersister(f"sqlite:///{path}", busy_timeout=20.0)
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        row = record()
        assert store.save_records_nowait([row]) is False  # at once: a 20 s busy wait would block the loop
        other.execute("COMMIT")
        store.save_records([row])  # the thread path, with the store's own busy timeout back in force
        assert store.load_record(row["pid"]) is not None
        assert store._execute("PRAGMA busy_timeout") == [(20000,)]
    finally:
        other.close()
        store.close()


def test_the_wal_is_checkpointed_on_the_thread_path_never_by_a_commit_on_the_loop(tmp_path: Path) -> None:
    store = SqlPersister(f"sqlite:///{tmp_path}/records.db")
    try:
        assert store._execute("PRAGMA wal_autocheckpoint") == [(0,)]
        answers = [store.save_records_nowait([record()]) for _ in range(250)]
        assert False in answers  # past the checkpoint interval it hands the write to a thread
        store.save_records([record()])  # the thread path checkpoints the WAL...
        assert store.save_records_nowait([record()]) is True  # ...so the loop may write again
        assert len(store.list_records(limit=1000)) == answers.count(True) + 2
    finally:
        store.close()
