"""One large record never breaks a listing (process_comms/worker/records_service.py,
process_comms/worker/persistence/_records.py): summaries carry bounded progress, and a listing answer is paged by
count and by bytes, with a cursor for the rest: in Python on both controllers, in ``process-comms list`` and in
``GET /api/processes``. The worker runs in this interpreter (nothing dies here) on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.worker import records_service
from process_comms.worker.persistence import InMemoryPersister
from process_comms.worker.persistence._records import CUT_KEY, SUMMARY_PROGRESS_BYTES
from tests.cli.test_commands import Run, rmq_cleanup, run  # noqa: F401 (fixtures)
from tests.dashboard.test_api import httpx, start_dashboard
from tests.waiting import wait_until
from tests.worker.records_bounds_procs import Bloated

pytestmark = pytest.mark.broker

T = 30.0
#: What an independent tester ran: 80 processes with 110 kB of progress each (8.8 MB of summaries).
BLOATS, SIZE = 80, 110_000
#: Their module (the store keeps every record: 8.8 MB is past a memory store's default budget).
BOUNDS_PROCS = "tests.worker.records_bounds_procs"


@contextlib.contextmanager
def bloated_fleet(
    broker_url: str, names: dict[str, str]
) -> Iterator[tuple[process_comms.RemoteProcessThreadController, list[Any]]]:
    """A worker (durable names, as the CLI declares them) running :data:`BLOATS` processes with big progress."""
    worker = process_comms.Worker(
        broker_url, persister=InMemoryPersister(max_record_bytes=None), allowed_modules=[BOUNDS_PROCS], **names
    ).start()
    try:
        with process_comms.connect(broker_url, **names) as comm:
            ctl = process_comms.RemoteProcessThreadController(comm)
            pids = [
                ctl.launch_process(Bloated, init_kwargs={"inputs": {"size": SIZE}}, nowait=True).result(T)
                for _ in range(BLOATS)
            ]
            for pid in pids:
                wait_until(lambda pid=pid: ctl.get_status(pid).result(T)["progress"].get("done") == 1, T, "progress")
            yield ctl, pids
    finally:
        worker.stop()


def test_a_listing_of_large_records_answers_with_bounded_summaries(
    broker_url: str,
    names: dict[str, str],
    run: Run,  # noqa: F811
    tmp_path: Path,
) -> None:
    with bloated_fleet(broker_url, names) as (ctl, pids):
        # before: the answer was 8.8 MB, over the wire's 8 MiB: EncodeError on the worker, RemoteError here
        rows = ctl.list_processes(limit=100).result(T)
        assert {str(row["pid"]) for row in rows} == {str(pid) for pid in pids}
        for row in rows:
            assert row["progress"] == {"done": 1, CUT_KEY: row["progress"][CUT_KEY]}
            assert row["progress"][CUT_KEY] > SIZE
            assert len(json.dumps(row["progress"])) <= SUMMARY_PROGRESS_BYTES
        assert len(ctl.get_process(pids[0]).result(T)["progress"]["blob"]) == SIZE  # show has the whole
        listed = run("--json", "list")
        assert listed.returncode == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == BLOATS
        dashboard = start_dashboard(broker_url, names, tmp_path)
        try:
            with httpx.Client(base_url=dashboard.url, timeout=T) as client:
                answer = client.get("/api/processes")  # before: 502
                assert answer.status_code == 200, answer.text
                assert len(answer.json()["processes"]) == BLOATS and answer.json()["next"] is None
        finally:
            dashboard.close()
        for pid in pids:
            assert ctl.kill_process(pid).result(T) is True
        rows = ctl.list_processes(limit=100).result(T)  # still after they were killed
        assert {row["state_name"] for row in rows} == {"killed"} and len(rows) == BLOATS


def test_a_listing_is_paged_by_bytes_with_a_cursor_for_the_rest(
    broker_url: str,
    names: dict[str, str],
    run: Run,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(records_service, "LIST_PAGE_BYTES", 20_000)  # the worker runs here: its budget, smaller
    with bloated_fleet(broker_url, names) as (ctl, pids):
        first = ctl.list_processes_page(limit=100).result(T)
        assert 0 < len(first["processes"]) < BLOATS and first["more"] is not None
        assert len(json.dumps(first["processes"], default=str, separators=(",", ":"))) <= 20_000
        seen, cursor, pages = [], None, 0
        while True:
            page = ctl.list_processes_page(limit=100, cursor=cursor).result(T)
            seen += [str(row["pid"]) for row in page["processes"]]
            pages += 1
            cursor = page["more"]
            if cursor is None:
                break
            assert pages < BLOATS, "the cursor never ends"
        assert sorted(seen) == sorted(str(pid) for pid in pids) and len(seen) == len(set(seen))
        newest_first = [str(pid) for pid in reversed(pids)]
        assert seen == newest_first
        assert [str(row["pid"]) for row in ctl.list_processes(limit=100).result(T)] == newest_first  # gathered
        assert len(ctl.list_processes(limit=30).result(T)) == 30

        listed = run("--json", "list", "--limit", "100")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [str(row["pid"]) for row in rows] == newest_first[: len(rows)]
        assert "--cursor " in listed.stderr
        cursor = listed.stderr.rsplit("--cursor ", 1)[1].split()[0]
        following = run("--json", "list", "--limit", "100", "--cursor", cursor)
        assert following.returncode == 0, following.stderr
        after = [str(row["pid"]) for row in json.loads(following.stdout)]
        assert after == newest_first[len(rows) : len(rows) + len(after)] and after

        bad = run("list", "--cursor", "not-a-cursor")
        assert bad.returncode != 0 and "not a listing cursor" in bad.stderr

        dashboard = start_dashboard(broker_url, names, tmp_path)
        try:
            with httpx.Client(base_url=dashboard.url, timeout=T) as client:
                one = client.get("/api/processes", params={"limit": 100}).json()
                assert one["has_more"] is True and one["next"]
                two = client.get("/api/processes", params={"limit": 100, "cursor": one["next"]}).json()
                both = [row["pid"] for row in one["processes"] + two["processes"]]
                assert both == newest_first[: len(both)] and len(both) > len(one["processes"])
                refused = client.get("/api/processes", params={"cursor": one["next"], "offset": 5})
                assert refused.status_code == 400
        finally:
            dashboard.close()


async def _asyncio_page(broker_url: str, names: dict[str, str]) -> dict[str, Any]:
    comm = process_comms.RmqCommunicator(broker_url, **names)  # type: ignore[arg-type]
    await comm.connect()
    try:
        return await process_comms.RemoteProcessController(comm).list_processes_page(limit=100)
    finally:
        await comm.close()


def test_the_asyncio_controller_reads_pages_too(broker_url: str, names: dict[str, str], run: Run) -> None:  # noqa: F811
    del run  # for its clean-up of the durable names
    with bloated_fleet(broker_url, names) as (_ctl, pids):
        page = asyncio.run(_asyncio_page(broker_url, names))
    assert {str(row["pid"]) for row in page["processes"]} == {str(pid) for pid in pids} and page["more"] is None
