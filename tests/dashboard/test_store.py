"""``process-comms dashboard --store URL`` with no worker up: its HTTP API answers from the store a stopped CLI
worker wrote (SQLite and PostgreSQL), read-only, and says so; a store it cannot read is a typed 503."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_commands import rmq_cleanup  # noqa: F401 (fixture)
from tests.dashboard.test_api import WAIT, start_dashboard
from tests.store_fleet import StoppedFleet, pg_schema, stopped_fleet  # noqa: F401 (fixtures)

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")


def test_the_api_answers_from_the_store_when_no_worker_is_up(
    stopped_fleet: StoppedFleet,  # noqa: F811
    broker_url: str,
    names: dict[str, str],
    tmp_path: Path,
) -> None:
    before = stopped_fleet.fingerprint()
    dashboard = start_dashboard(broker_url, names, tmp_path, "--store", stopped_fleet.url)
    try:
        with httpx.Client(base_url=dashboard.url, timeout=WAIT) as client:
            listing = client.get("/api/processes")
            assert listing.status_code == 200, listing.text
            page = listing.json()
            assert page["source"] == "store" and "no worker is up to answer" in page["source_reason"]
            assert [(row["pid"], row["state_name"], row["source"]) for row in page["processes"]] == [
                (stopped_fleet.pids["Broken"], "excepted", "store"),
                (stopped_fleet.pids["Reporter"], "finished", "store"),
            ]
            assert client.get("/api/processes", params={"state": "waiting"}).json()["source"] == "store"

            record = client.get(f"/api/processes/{stopped_fleet.pids['Broken']}")
            assert record.status_code == 200, record.text
            body = record.json()
            assert body["source"] == "store" and body["live"] is False
            assert body["exception"]["type"] == "ZeroDivisionError" and "1 / 0" in body["exception"]["traceback"]
            unknown = client.get("/api/processes/no-such-pid")
            assert unknown.status_code == 404 and "the store has no record of it" in unknown.json()["error"]
        assert dashboard.stop() == 0, dashboard.err_path.read_text()
    finally:
        dashboard.close()
    assert "Traceback" not in dashboard.err_path.read_text()
    assert stopped_fleet.fingerprint() == before


def test_a_store_it_cannot_read_is_a_503_that_says_why(
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.db"
    dashboard = start_dashboard(broker_url, names, tmp_path, "--store", f"sqlite:///{missing}")
    try:
        with httpx.Client(base_url=dashboard.url, timeout=WAIT) as client:
            response = client.get("/api/processes")
            assert response.status_code == 503, response.text
            assert response.json()["error_type"] == "StoreUnavailable"
            assert f"there is no store file '{missing}'" in response.json()["error"]
        assert dashboard.stop() == 0, dashboard.err_path.read_text()
    finally:
        dashboard.close()
    assert not missing.exists()


def test_without_a_store_the_api_says_no_worker_is_up(
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    dashboard = start_dashboard(broker_url, names, tmp_path)
    try:
        with httpx.Client(base_url=dashboard.url, timeout=WAIT) as client:
            # the service is unavailable (503), not the process unknown (404): the pid may well exist
            for path in ("/api/processes", "/api/processes/3f2504e0-4f89-11d3-9a0c-0305e82c3301"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert "no worker is up" in response.json()["error"]
        assert dashboard.stop() == 0, dashboard.err_path.read_text()
    finally:
        dashboard.close()
