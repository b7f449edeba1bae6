"""The dashboard in a real browser (issue 18): Debian's headless Chromium driven by Playwright, against a CLI worker,
the real ``process-comms dashboard`` and the real broker. Rows appear and change state without a reload; one
process is paused and another killed from the page; the screenshot is saved in the test's temporary directory
(and in ``$PROCESS_COMMS_SCREENSHOT_DIR`` when set: ``docs/images/dashboard.png`` is made that way).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from tests.conftest import delete_broker_objects
from tests.dashboard.test_api import PROCS, RECORDS_PROCS, WAIT, start_dashboard, start_worker, unique_names

#: The browser: Debian's package (`.ci/run` installs it); Playwright's own browser downloads are not used.
CHROMIUM = os.environ.get("PROCESS_COMMS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: Milliseconds Playwright waits for anything on the page.
PAGE_WAIT_MS = int(WAIT * 1000)


def _needs(what: str) -> None:
    """Skip where the browser stack is missing, except in CI, where it must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: .ci/run installs it")
    pytest.skip(f"{what} is not installed")


try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    _needs("playwright")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A headless Chromium page (1280x800)."""
    if not Path(CHROMIUM).exists():
        _needs(f"chromium ({CHROMIUM})")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(PAGE_WAIT_MS)
            expect.set_options(timeout=PAGE_WAIT_MS)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def _row(page: Page, pid: str) -> Any:
    return page.locator(f'#processes tr[data-pid="{pid}"]')


def test_the_page_shows_processes_live_and_pauses_and_kills_them(page: Page, broker_url: str, tmp_path: Path) -> None:
    prefix, names = unique_names()
    worker = start_worker(broker_url, names, tmp_path)
    board = comm = None
    try:
        board = start_dashboard(broker_url, names, tmp_path)
        comm = process_comms.connect(broker_url, **names)
        controller = process_comms.RemoteProcessThreadController(comm)

        def launch(cls: str, **inputs: Any) -> str:
            return str(controller.launch_process(cls, init_kwargs={"inputs": inputs}, nowait=True).result(WAIT))

        page.goto(board.url + "/")
        expect(page.locator("#live")).to_have_text("live")  # the event stream is open
        expect(page.locator("#empty")).to_be_visible()
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        # rows appear and change state as the broadcasts come: no reload
        quick = launch(f"{PROCS}:Stepper", n=1, delay=0.0)
        slow = launch(f"{PROCS}:Stepper", n=600, delay=0.05)
        holder = launch(f"{PROCS}:Holder")
        broken = launch(f"{RECORDS_PROCS}:Broken")
        expect(_row(page, quick)).to_have_attribute("data-state", "finished")
        expect(_row(page, broken)).to_have_attribute("data-state", "excepted")
        expect(_row(page, holder)).to_have_attribute("data-state", "waiting")
        expect(_row(page, slow).locator(".cls")).to_have_text(f"{PROCS}:Stepper")
        expect(_row(page, slow)).to_have_attribute("data-state", "waiting")
        expect(_row(page, quick).locator(".bar .fill")).to_have_attribute("style", "width: 100%;")

        # pause the slow one from its page: the answer shows, the worker agrees
        _row(page, slow).locator(".pid a").click()
        expect(page.locator("#p-pid")).to_have_text(slow)
        expect(page.locator('[data-fact="class"]')).to_have_text(f"{PROCS}:Stepper")
        page.locator("#do-pause").click()
        expect(page.locator("#answer")).to_have_text("pause: true")
        assert controller.get_status(uuid.UUID(slow)).result(WAIT)["paused"] is True
        expect(page.locator('[data-fact="paused"]')).to_have_text("yes")
        expect(page.locator("#p-history")).to_contain_text("paused")
        expect(page.locator("#p-log")).to_contain_text("REPORT: counting 600 steps")

        # kill the holder from its page: its row turns killed, live
        page.goto(f"{board.url}/#/process/{holder}")
        expect(page.locator('[data-fact="state"]')).to_have_text("waiting")
        page.locator("#do-kill").click()
        page.locator("#kill-confirm").click()  # the page asks first (tests/dashboard/test_page.py)
        expect(page.locator("#answer")).to_have_text("kill: true")
        expect(page.locator('[data-fact="state"]')).to_have_text("killed")
        assert controller.wait_for_process(uuid.UUID(holder), WAIT).result(WAIT + 2) == "killed"

        # a failed process shows its traceback; an unknown pid shows the typed error
        page.goto(f"{board.url}/#/process/{broken}")
        expect(page.locator("#p-exception")).to_contain_text("ZeroDivisionError: division by zero")
        expect(page.locator("#p-exception")).to_contain_text("1 / 0")
        page.goto(f"{board.url}/#/process/{uuid.uuid4()}")
        expect(page.locator("#p-error")).to_contain_text("ProcessUnreachable: ")

        # back on the table: the states the page heard about, and the queue's worker
        page.goto(f"{board.url}/#/")
        expect(_row(page, holder)).to_have_attribute("data-state", "killed")
        expect(_row(page, slow).locator("td.paused")).to_have_text("yes")
        expect(page.locator("#processes tbody tr")).to_have_count(4)
        more = [launch(f"{PROCS}:Stepper", n=200, delay=0.1) for _ in range(2)]
        for pid in more:
            expect(_row(page, pid)).to_have_attribute("data-state", "waiting")
            expect(_row(page, pid).locator(".progress .muted")).to_contain_text("of=200")
        page.locator("#filter-state").select_option("finished")
        page.locator("#filters button[type=submit]").click()
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        page.locator("#filter-state").select_option("")
        page.locator("#filters button[type=submit]").click()
        expect(page.locator("#processes tbody tr")).to_have_count(6)
        assert page.evaluate("window.__sameDocument") is True  # hash navigation only: the document was never reloaded

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("PROCESS_COMMS_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "dashboard.png")

        page.goto(f"{board.url}/#/queues")
        expect(page.locator(f'#queues tr[data-queue="{names["task_queue"]}"] .consumers')).to_have_text("1")
        expect(page.locator("#workers-table tbody tr")).to_have_count(1)
        expect(page.locator("#workers-table .slots")).to_contain_text("0 / ")  # slots used / total

        kills = controller.kill_many([uuid.UUID(pid) for pid in (slow, *more)])
        assert set(process_comms.wait_all(kills, WAIT).values()) == {True}
        assert board.stop() == 0, board.err_path.read_text()
        assert worker.stop() == 0, worker.err_path.read_text()
    finally:
        if comm is not None:
            comm.close()
        for served in (board, worker):
            if served is not None:
                served.close()
        delete_broker_objects(prefix)
