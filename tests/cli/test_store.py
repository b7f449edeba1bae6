"""``list``, ``show``, ``report`` and ``status`` with no worker up, answered from the store the workers wrote
(``--store URL`` or a profile's ``store``), read-only: real broker, a real CLI worker that wrote a SQLite or
PostgreSQL store and stopped, the commands as subprocesses. Also the controllers' ``store=`` in Python."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import textwrap
from pathlib import Path

import pytest

import process_comms
from process_comms.cli import main as cli
from process_comms.wire.messages import parse_pid
from tests.cli.test_commands import (  # noqa: F401 (fixtures)
    CLI,
    READY_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    LineReader,
    Run,
    _env,
    _global_options,
    _in_parallel,
    _one_line_error,
    rmq_cleanup,
    run,
)
from tests.store_fleet import PROCS, StoppedFleet, pg_schema, start_cli_worker, stopped_fleet  # noqa: F401 (fixtures)
from tests.waiting import wait_until

#: The line a command prints first when the store answered because no worker is up.
FROM_STORE = "from the store "
NO_WORKER = "no worker answered (no worker is up to answer for process records"


def test_list_show_report_status_answer_from_the_store_and_leave_it_unchanged(
    run: Run,  # noqa: F811
    stopped_fleet: StoppedFleet,  # noqa: F811
) -> None:
    store, pids = stopped_fleet.url, stopped_fleet.pids
    before = stopped_fleet.fingerprint()
    reporter, broken = pids["Reporter"], pids["Broken"]

    listing, as_json, show, report, report_json, status = _in_parallel(
        lambda args: run(*args),
        [
            ["list", "--store", store],
            ["--json", "list", "--store", store],
            ["show", broken, "--store", store],
            ["report", reporter, "--store", store],
            ["--json", "report", reporter, "--store", store],
            ["status", reporter, broken, "--store", store],
        ],
    )

    assert listing.returncode == 0, listing.stderr
    note, header, *rows = listing.stdout.splitlines()
    assert note.startswith(FROM_STORE) and NO_WORKER in note, note
    assert "://" in note  # the store's URL says which store answered
    assert header.split() == ["PID", "CLASS", "STATE", "PAUSED", "PROGRESS", "WORKER", "AGE"]
    assert sorted(row.split()[:3] for row in rows) == sorted(
        [[reporter, f"{PROCS}:Reporter", "finished"], [broken, f"{PROCS}:Broken", "excepted"]]
    )
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert [r["class"] for r in records] == [f"{PROCS}:Broken", f"{PROCS}:Reporter"]  # newest first
    assert all(r["source"] == "store" and r["live"] is False and NO_WORKER in r["source_reason"] for r in records)

    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith(FROM_STORE) and NO_WORKER in show.stdout.splitlines()[0]
    assert "state:     excepted" in show.stdout and "exception: ZeroDivisionError: division by zero" in show.stdout
    assert "1 / 0" in show.stdout  # the traceback's source line, from the stored record

    assert report.returncode == 0, report.stderr
    first, *lines = report.stdout.splitlines()
    assert first.startswith(FROM_STORE) and NO_WORKER in first
    assert [line.split(" ", 2)[2] for line in lines] == ["REPORT: starting the work", "INFO: step 1 of 2"]
    answer = json.loads(report_json.stdout)
    assert answer["source"] == "store" and [line["level"] for line in answer["log"]] == ["REPORT", "INFO"]

    assert status.returncode == 0, status.stderr
    first, head, *table = status.stdout.splitlines()
    assert head.split()[:2] == ["PID", "STATE"]
    assert first.startswith(FROM_STORE)
    assert {row.split()[0]: row.split()[1] for row in table} == {reporter: "finished", broken: "excepted"}

    assert stopped_fleet.fingerprint() == before  # read-only: not a byte, not a row changed


def test_the_profiles_store_answers_and_a_pid_it_lacks_exits_3(
    run: Run,  # noqa: F811
    stopped_fleet: StoppedFleet,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The testers' report: with the store named only by the profile, ``list`` and ``show`` answered
    'no worker is up to answer for process records'."""
    home = tmp_path / "config"
    (home / "process-comms").mkdir(parents=True)
    (home / "process-comms" / "config.toml").write_text(
        textwrap.dedent(
            f"""
            [profiles.lab]
            store = "{stopped_fleet.url}"
            """
        )
    )
    env = _env(XDG_CONFIG_HOME=str(home))
    listing = run("--profile", "lab", "--json", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert sorted(str(r["pid"]) for r in json.loads(listing.stdout)) == sorted(stopped_fleet.pids.values())
    missing = run("--profile", "lab", "show", "no-such-pid", env=env)
    assert missing.returncode == cli.EXIT_UNREACHABLE
    assert "the store has no record of it" in _one_line_error(missing)


def test_without_a_store_no_worker_is_still_an_unreachable_error(run: Run) -> None:  # noqa: F811
    result = run("--timeout", "5", "show", "some-pid")
    assert result.returncode == cli.EXIT_UNREACHABLE
    assert "no worker is up to answer for process records" in _one_line_error(result)


def test_a_missing_or_unreachable_store_is_a_typed_one_line_error(run: Run, tmp_path: Path) -> None:  # noqa: F811
    missing = tmp_path / "missing.db"
    empty = tmp_path / "empty.db"
    with sqlite3.connect(empty) as conn:  # a SQLite file, but no worker's: no records table
        conn.execute("CREATE TABLE other (x INTEGER)")
    conn.close()
    empty_bytes = empty.read_bytes()
    no_file, no_table, no_server, in_memory = _in_parallel(
        lambda args: run("--timeout", "5", *args),
        [
            ["list", "--store", f"sqlite:///{missing}"],
            ["show", "some-pid", "--store", f"sqlite:///{empty}"],
            ["report", "some-pid", "--store", "postgresql://postgres@127.0.0.1:1/test"],
            ["list", "--store", "memory://"],
        ],
    )
    for result in (no_file, no_table, no_server, in_memory):
        assert result.returncode == cli.EXIT_ERROR, result.stderr
    assert f"there is no store file '{missing}'" in _one_line_error(no_file)
    assert not missing.exists()  # a reader creates no file
    assert "has no process records (table process_comms_checkpoints_records" in _one_line_error(no_table)
    assert empty.read_bytes() == empty_bytes  # and no table
    assert "cannot open the store postgresql://postgres@127.0.0.1:1/test to read" in _one_line_error(no_server)
    assert "an in-memory store lives inside its worker" in _one_line_error(in_memory)


def test_the_controllers_read_the_store_when_no_worker_answers(
    stopped_fleet: StoppedFleet,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
) -> None:
    before = stopped_fleet.fingerprint()
    broken = stopped_fleet.pids["Broken"]
    with process_comms.open_record_store(stopped_fleet.url, timeout=10) as store:
        with process_comms.connect(broker_url, **names) as comm:
            controller = process_comms.RemoteProcessThreadController(comm, rpc_timeout=10, store=store)
            listing = controller.list_processes().result(20)
            assert listing.source == "store" and "no worker is up" in str(listing.source_reason)
            assert {str(row["pid"]) for row in listing} == set(stopped_fleet.pids.values())
            record = controller.get_process(parse_pid(broken)).result(20)
            assert record["state_name"] == "excepted" and record["source"] == "store"
            with pytest.raises(process_comms.RemoteError, match="division by zero"):  # outputs_of the stored record
                controller.get_outputs(record["pid"]).result(20)
            none = controller.list_processes(state="waiting").result(20)
            assert list(none) == [] and none.source == "store"  # also an empty answer says where it came from

        async def from_asyncio() -> None:
            async with process_comms.RemoteProcessController(
                await process_comms.connect_async(broker_url, **names), rpc_timeout=10, store=store
            ) as controller:
                listing = await controller.list_processes(class_name=f"{PROCS}:Reporter")
                assert [row["state_name"] for row in listing] == ["finished"] and listing.source == "store"

        asyncio.run(from_asyncio())
    assert stopped_fleet.fingerprint() == before


def test_a_worker_that_answers_beats_the_store_and_one_that_does_not_falls_back(
    run: Run,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    """The fleet is asked first: a live process answers as itself (the store's copy may lag). A worker that is
    up but answers nothing (SIGSTOP) leaves the answer to the store, whose rows then cannot say ``live``."""
    url = f"sqlite:///{tmp_path}/w.db"
    err_path = tmp_path / "worker.err"
    worker = start_cli_worker(broker_url, names, url, err_path)
    try:
        assert worker.stdout is not None
        assert LineReader(worker.stdout).next(READY_TIMEOUT) == "worker ready", err_path.read_text()
        sleeper = run("launch", f"{PROCS}:Sleeper", "--nowait").stdout.strip()
        with process_comms.open_record_store(url, timeout=10) as store:
            wait_until(
                lambda: (store.load_record(parse_pid(sleeper)) or {}).get("state_name") == "waiting",
                READY_TIMEOUT,
                "the sleeper's record to reach the store",
            )

        fleet = run("--json", "list", "--store", url)
        assert fleet.returncode == 0, fleet.stderr
        [row] = json.loads(fleet.stdout)
        assert row["pid"] == sleeper and row["live"] is True and "source" not in row  # the process answered

        worker.send_signal(signal.SIGSTOP)  # up (its queues stay bound) but answering nothing
        try:
            stored = run("--json", "--timeout", "3", "list", "--store", url)
            shown = run("--timeout", "3", "show", sleeper, "--store", url)
        finally:
            worker.send_signal(signal.SIGCONT)
        assert stored.returncode == 0, stored.stderr
        [row] = json.loads(stored.stdout)
        assert row["pid"] == sleeper and row["state_name"] == "waiting" and row["source"] == "store"
        assert row["live"] is None and "no answer within 3" in row["source_reason"]  # a worker may still run it
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(FROM_STORE) and "state:     waiting" in shown.stdout

        assert run("kill", sleeper).returncode == 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=STOP_TIMEOUT)
