"""Tests for process_comms.worker.persistence: in memory, SQLite (file) and PostgreSQL (127.0.0.1:5432/test)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from process_comms.errors import PersistenceError
from process_comms.worker.persistence import (
    Bundle,
    InMemoryPersister,
    PersistedCheckpoint,
    Persister,
    SqlPersister,
    get_persister,
)
from tests.conftest import POSTGRES_URL

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_URL = POSTGRES_URL  # PROCESS_COMMS_TEST_POSTGRES, or 127.0.0.1:5432/test
TIMEOUT = 60.0


@dataclass
class FakeProcess:
    """Stand-in for a process: a pid and a save() returning its state."""

    pid: Any
    state: dict[str, Any] = field(default_factory=dict)

    def save(self) -> dict[str, Any]:
        return self.state


def _pg_admin() -> Any:
    """Connect to the test PostgreSQL server, failing (never skipping) the test if it is unreachable."""
    import psycopg

    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL test server at {PG_URL} is unreachable (it must be running): {exc}")


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A unique table name on the test server, dropped after the test."""
    table = f"pc_test_{uuid.uuid4().hex[:16]}"
    with _pg_admin():
        pass
    yield table
    with _pg_admin() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"DROP TABLE IF EXISTS {table}_claims")


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def persister(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Persister]:
    """Each backend in turn, fresh and empty."""
    if request.param == "memory":
        p: Persister = InMemoryPersister()
    elif request.param == "sqlite":
        p = SqlPersister(f"sqlite:///{tmp_path}/checkpoints.db")
    else:
        table = request.getfixturevalue("pg_table")
        p = SqlPersister(PG_URL, table=table)
    with p:
        yield p


PIDS = [uuid.uuid4(), 42, "proc-a"]


@pytest.mark.parametrize("pid", PIDS, ids=["uuid", "int", "str"])
def test_round_trip_keeps_pid_type_and_state(persister: Persister, pid: Any) -> None:
    state = {"a": 1, "nested": {"list": [1, 2.5, "x", None, True]}, "id": uuid.uuid4()}
    persister.save_checkpoint(FakeProcess(pid, state))
    loaded = persister.load_checkpoint(pid)
    assert isinstance(loaded, Bundle)
    assert loaded == state
    assert isinstance(loaded["id"], uuid.UUID)
    [checkpoint] = persister.get_checkpoints()
    assert checkpoint == PersistedCheckpoint(pid, None)
    assert type(checkpoint.pid) is type(pid)
    assert persister.get_process_checkpoints(pid) == [PersistedCheckpoint(pid, None)]


def test_int_str_and_uuid_pids_are_distinct(persister: Persister) -> None:
    u = uuid.uuid4()
    for pid in (1, "1", u, str(u)):
        persister.save_bundle(pid, {"pid": repr(pid)})
    for pid in (1, "1", u, str(u)):
        assert persister.load_checkpoint(pid) == {"pid": repr(pid)}
    assert {(type(c.pid), c.pid) for c in persister.get_checkpoints()} == {
        (int, 1),
        (str, "1"),
        (uuid.UUID, u),
        (str, str(u)),
    }


def test_tags_are_separate_checkpoints(persister: Persister) -> None:
    pid = uuid.uuid4()
    persister.save_checkpoint(FakeProcess(pid, {"v": "untagged"}))
    persister.save_checkpoint(FakeProcess(pid, {"v": "one"}), tag="one")
    persister.save_checkpoint(FakeProcess(pid, {"v": "two"}), tag="two")
    assert persister.load_checkpoint(pid) == {"v": "untagged"}
    assert persister.load_checkpoint(pid, "one") == {"v": "one"}
    assert persister.load_checkpoint(pid, tag="two") == {"v": "two"}
    assert set(persister.get_process_checkpoints(pid)) == {
        PersistedCheckpoint(pid, None),
        PersistedCheckpoint(pid, "one"),
        PersistedCheckpoint(pid, "two"),
    }


def test_save_overwrites(persister: Persister) -> None:
    process = FakeProcess(7, {"step": 1})
    persister.save_checkpoint(process, tag="t")
    process.state = {"step": 2}
    persister.save_checkpoint(process, tag="t")
    assert persister.load_checkpoint(7, "t") == {"step": 2}
    assert persister.get_checkpoints() == [PersistedCheckpoint(7, "t")]


def test_get_checkpoints_lists_every_process(persister: Persister) -> None:
    a, b = uuid.uuid4(), "b"
    persister.save_bundle(a, {})
    persister.save_bundle(a, {}, tag="x")
    persister.save_bundle(b, {}, tag="y")
    assert set(persister.get_checkpoints()) == {
        PersistedCheckpoint(a, None),
        PersistedCheckpoint(a, "x"),
        PersistedCheckpoint(b, "y"),
    }
    assert persister.get_process_checkpoints(b) == [PersistedCheckpoint(b, "y")]
    assert persister.get_process_checkpoints("nobody") == []


def test_delete_checkpoint(persister: Persister) -> None:
    pid = uuid.uuid4()
    persister.save_bundle(pid, {"v": 0})
    persister.save_bundle(pid, {"v": 1}, tag="keep")
    persister.delete_checkpoint(pid)
    with pytest.raises(PersistenceError):
        persister.load_checkpoint(pid)
    assert persister.load_checkpoint(pid, "keep") == {"v": 1}
    persister.delete_checkpoint(pid)  # already gone: no error
    persister.delete_checkpoint(uuid.uuid4(), tag="never-saved")
    assert persister.get_checkpoints() == [PersistedCheckpoint(pid, "keep")]


def test_delete_process_checkpoints(persister: Persister) -> None:
    persister.save_bundle("gone", {})
    persister.save_bundle("gone", {}, tag="t1")
    persister.save_bundle("stays", {}, tag="t1")
    persister.delete_process_checkpoints("gone")
    persister.delete_process_checkpoints("gone")
    persister.delete_process_checkpoints("never-saved")
    assert persister.get_checkpoints() == [PersistedCheckpoint("stays", "t1")]


def test_missing_checkpoint_raises_clear_error(persister: Persister) -> None:
    pid = uuid.uuid4()
    with pytest.raises(PersistenceError, match=f"no checkpoint for process {pid} \\(tag None\\)"):
        persister.load_checkpoint(pid)
    persister.save_bundle(pid, {})
    with pytest.raises(PersistenceError, match=f"no checkpoint for process {pid} \\(tag 'other'\\)"):
        persister.load_checkpoint(pid, "other")


@pytest.mark.parametrize(
    "state",
    [{"obj": object()}, {"set": {1, 2}}, {"tuple": (1, 2)}, {1: "int key"}, {"nan": float("nan")}, {"b": b"x"}],
    ids=["object", "set", "tuple", "int-key", "nan", "bytes"],
)
def test_non_json_safe_state_refused(persister: Persister, state: dict[Any, Any]) -> None:
    with pytest.raises(PersistenceError, match="not JSON-safe"):
        persister.save_checkpoint(FakeProcess("p", state))
    assert persister.get_checkpoints() == []


def test_non_dict_state_and_bad_pid_refused(persister: Persister) -> None:
    with pytest.raises(PersistenceError, match="must be a dict"):
        persister.save_bundle("p", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(PersistenceError, match="pid"):
        persister.save_bundle((1, 2), {})
    with pytest.raises(TypeError, match="tag"):
        persister.save_bundle("p", {}, tag=3)  # type: ignore[arg-type]
    assert persister.get_checkpoints() == []


def test_loaded_bundles_are_independent_copies(persister: Persister) -> None:
    state: dict[str, Any] = {"items": [1, 2], "inner": {"k": "v"}}
    persister.save_bundle("p", state)
    state["items"].append("changed after save")
    first = persister.load_checkpoint("p")
    first["inner"]["k"] = "mutated"
    first["new"] = True
    second = persister.load_checkpoint("p")
    assert second == {"items": [1, 2], "inner": {"k": "v"}}
    assert second is not first


def test_concurrent_writers(persister: Persister) -> None:
    threads_n, saves_n = 8, 50
    barrier = threading.Barrier(threads_n, timeout=TIMEOUT)
    errors: list[Exception] = []

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(saves_n):
                persister.save_checkpoint(FakeProcess(f"w{n}", {"n": n, "i": i}), tag=f"s{i}")
                persister.save_bundle("shared", {"n": n, "i": i})
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "writer threads did not finish in time"
    assert errors == []
    assert len(persister.get_checkpoints()) == threads_n * saves_n + 1
    for n in range(threads_n):
        assert len(persister.get_process_checkpoints(f"w{n}")) == saves_n
        for i in range(saves_n):
            assert persister.load_checkpoint(f"w{n}", f"s{i}") == {"n": n, "i": i}
    assert persister.load_checkpoint("shared")["i"] in range(saves_n)


keys = st.text(max_size=8).filter(lambda k: k != "__uuid__")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.uuids(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=50, deadline=None)
@given(state=st.dictionaries(keys, json_values, max_size=5), tag=st.none() | st.text(min_size=1))
def test_any_json_safe_state_round_trips(state: dict[str, Any], tag: str | None) -> None:
    for p in (InMemoryPersister(), SqlPersister("sqlite://")):
        with p:
            p.save_bundle("pid", state, tag)
            assert p.load_checkpoint("pid", tag) == state


# --- SQLite specifics -------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from process_comms.worker.persistence import SqlPersister

    url, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.stdin.readline()  # start together
    with SqlPersister(url) as p:
        for i in range(count):
            p.save_bundle(f"{worker}-{i}", {"worker": worker, "i": i})
            p.save_bundle("shared", {"worker": worker, "i": i}, tag="last")
    print("done")
    """
)


def test_sqlite_two_processes_write_same_file(tmp_path: Path) -> None:
    url, count = f"sqlite:///{tmp_path}/shared.db", 200
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, worker, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for worker in ("a", "b")
    ]
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=TIMEOUT)
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "done"
    with SqlPersister(url) as p:
        assert len(p.get_checkpoints()) == 2 * count + 1
        for worker in ("a", "b"):
            for i in range(count):
                assert p.load_checkpoint(f"{worker}-{i}") == {"worker": worker, "i": i}
        assert p.load_checkpoint("shared", "last")["i"] == count - 1


def test_sqlite_file_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/durable.db"
    pid = uuid.uuid4()
    with SqlPersister(url, table="custom_table") as p:
        p.save_checkpoint(FakeProcess(pid, {"x": 1}), tag="t")
    with get_persister(url) as p:
        assert p.get_checkpoints() == []  # a different table
    with SqlPersister(url, table="custom_table") as p:
        assert p.load_checkpoint(pid, "t") == {"x": 1}
        assert p.get_checkpoints() == [PersistedCheckpoint(pid, "t")]


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SqlPersister("sqlite:///relative.db") as p:
        p.save_bundle(1, {})
    assert (tmp_path / "relative.db").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_memory_urls(url: str) -> None:
    with SqlPersister(url) as p:
        p.save_bundle(1, {"a": 1})
        assert p.load_checkpoint(1) == {"a": 1}
    with SqlPersister(url) as p:
        assert p.get_checkpoints() == []


# --- PostgreSQL specifics ---------------------------------------------------------------------------


def test_postgres_reconnects_after_connection_killed(pg_table: str) -> None:
    with SqlPersister(PG_URL, table=pg_table) as p:
        p.save_bundle("p", {"v": 1})
        backend_pid = p._conn.info.backend_pid
        with _pg_admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        assert p.load_checkpoint("p") == {"v": 1}
        assert p._conn.info.backend_pid != backend_pid


def test_postgres_password_masked(pg_table: str) -> None:
    url = PG_URL.replace("postgres@", "postgres:s3cret@")
    with SqlPersister(url, table=pg_table) as p:
        assert "s3cret" not in repr(p)
        assert "postgres:***@" in repr(p)
    with pytest.raises(PersistenceError) as info:
        SqlPersister("postgresql://postgres:s3cret@127.0.0.1:1/test", busy_timeout=5)
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError) as bad:
        SqlPersister("mysql://root:s3cret@localhost/db?password=s3cret")
    assert "s3cret" not in str(bad.value)
    query_url = f"{PG_URL}?password=s3cret&application_name=pc_test"
    with SqlPersister(query_url, table=pg_table) as p:
        assert "s3cret" not in repr(p)
        assert "password=***&application_name=pc_test" in repr(p)


# --- construction ------------------------------------------------------------------------------------


def test_get_persister(tmp_path: Path) -> None:
    assert isinstance(get_persister(None), InMemoryPersister)
    assert isinstance(get_persister("memory://"), InMemoryPersister)
    with get_persister(f"sqlite:///{tmp_path}/x.db") as p:
        assert isinstance(p, SqlPersister)
        assert repr(p) == f"SqlPersister('sqlite:///{tmp_path}/x.db', table='process_comms_checkpoints')"


def test_unknown_scheme_and_bad_table_rejected() -> None:
    with pytest.raises(ValueError, match="unknown persister URL scheme 'redis'"):
        get_persister("redis://localhost")
    with pytest.raises(ValueError, match="invalid table name"):
        SqlPersister("sqlite://", table="x; DROP TABLE y")
    with pytest.raises(ValueError, match="invalid SQLite URL"):
        SqlPersister("sqlite://host/x.db")
    with pytest.raises(ValueError, match="invalid SQLite URL"):
        SqlPersister("sqlite:x.db")


def test_closed_persister_refuses_calls() -> None:
    p = SqlPersister("sqlite://")
    with p:
        p.save_bundle(1, {})
    with pytest.raises(PersistenceError, match="closed"):
        p.load_checkpoint(1)
    p.close()  # idempotent


def test_persister_is_abstract() -> None:
    with pytest.raises(TypeError):
        Persister()  # type: ignore[abstract]


def test_claims_exclude_other_owners_until_released_or_expired(persister: Persister) -> None:
    pid = uuid.uuid4()
    assert persister.claim(pid, "worker-a", ttl=30)
    assert persister.claim(pid, "worker-a", ttl=30)  # renewing one's own claim
    assert not persister.claim(pid, "worker-b", ttl=30)
    persister.release(pid, "worker-b")  # not b's: nothing happens
    assert not persister.claim(pid, "worker-b", ttl=30)
    persister.release(pid, "worker-a")
    assert persister.claim(pid, "worker-b", ttl=0.05)
    assert persister.claim(uuid.uuid4(), "worker-a", ttl=30)  # other pids are independent


def test_an_expired_claim_can_be_taken(persister: Persister) -> None:
    pid = 7
    assert persister.claim(pid, "dead-worker", ttl=-1)  # already expired, as a crashed owner's claim becomes
    assert persister.claim(pid, "live-worker", ttl=30)
    assert not persister.claim(pid, "dead-worker", ttl=30)


def test_concurrent_claims_have_one_winner(persister: Persister) -> None:
    pid = uuid.uuid4()
    results: list[bool] = []
    lock = threading.Lock()

    def claim(owner: str) -> None:
        won = persister.claim(pid, owner, ttl=30)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 7 + [True]
