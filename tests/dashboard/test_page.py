"""The dashboard page as an operator uses it, in headless Chromium against a CLI worker, the real ``process-comms
dashboard`` and the real broker: the filter lives in the URL (reload and back keep it), excepted rows show their
error, Kill asks first in a dialog, and with tokens the page logs in for a cookie no script can read.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import process_comms
from tests.cli.test_commands import _env
from tests.conftest import delete_broker_objects
from tests.dashboard.test_api import PROCS, RECORDS_PROCS, WAIT, start_dashboard, start_worker, unique_names
from tests.dashboard.test_browser import Page, expect, page  # noqa: F401 (fixture)


def _row(page: Page, pid: str) -> Any:  # noqa: F811
    return page.locator(f'#processes tr[data-pid="{pid}"]')


def _selected(page: Page) -> list[str]:  # noqa: F811
    return list(page.evaluate("[...document.getElementById('filter-state').selectedOptions].map(o => o.value)"))


def test_the_filter_is_in_the_url_rows_show_errors_and_kill_asks_first(
    page: Page,  # noqa: F811
    broker_url: str,
    tmp_path: Path,
) -> None:
    prefix, names = unique_names()
    worker = start_worker(broker_url, names, tmp_path)
    board = comm = None
    try:
        board = start_dashboard(broker_url, names, tmp_path)
        comm = process_comms.connect(broker_url, **names)
        controller = process_comms.RemoteProcessThreadController(comm)

        def launch(cls: str, label: str) -> str:
            return str(controller.launch_process(cls, nowait=True, label=label).result(WAIT))

        tag = f"tag-{uuid.uuid4().hex[:6]}"
        broken = launch(f"{RECORDS_PROCS}:Broken", f"{tag}-broken")
        holder = launch(f"{PROCS}:Holder", f"{tag}-holder")
        assert controller.wait_for_process(uuid.UUID(broken), WAIT).result(WAIT + 2) == "excepted"

        # a shared link: the filter comes from the URL, and the excepted row says why
        page.goto(f"{board.url}/#/?state=excepted")
        expect(_row(page, broken)).to_have_attribute("data-state", "excepted")
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(_row(page, broken).locator("td.error")).to_have_text("ZeroDivisionError: division by zero")
        assert _selected(page) == ["excepted"]
        page.reload()
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(_row(page, broken)).to_be_visible()
        assert _selected(page) == ["excepted"]

        # a filter applied in the page goes into the URL; back brings the one before
        page.locator("#filter-state").select_option("waiting")
        page.locator("#filter-class").fill(f"{PROCS}:Holder")
        page.locator("#filters button[type=submit]").click()
        expect(page).to_have_url(f"{board.url}/#/?state=waiting&class={PROCS}%3AHolder")
        expect(_row(page, holder)).to_have_attribute("data-state", "waiting")
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(_row(page, holder).locator("td.error")).to_have_text("")
        page.go_back()
        expect(_row(page, broken)).to_be_visible()
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(page.locator("#filter-class")).to_have_value("")
        assert _selected(page) == ["excepted"]

        # search by label, several states, another order: into the URL too
        page.locator("#filter-state").select_option([])
        page.locator("#filter-label").fill(f"{tag}-hold")
        page.locator("#filters button[type=submit]").click()
        expect(page).to_have_url(f"{board.url}/#/?label={tag}-hold")
        expect(page.locator("#processes tbody tr")).to_have_count(1)
        expect(_row(page, holder).locator("td.label")).to_have_text(f"{tag}-holder")
        page.locator("#filter-state").select_option(["waiting", "excepted"])
        page.locator("#filter-label").fill(tag)
        page.locator("#sort").select_option("label")
        page.locator("#reverse").check()
        page.locator("#filters button[type=submit]").click()
        expect(page).to_have_url(f"{board.url}/#/?state=waiting&state=excepted&label={tag}&sort=label&reverse=1")
        expect(page.locator("#processes tbody tr")).to_have_count(2)
        expect(page.locator("#processes tbody tr").first).to_have_attribute("data-pid", holder)  # z..a
        page.reload()
        expect(page.locator("#processes tbody tr")).to_have_count(2)
        assert _selected(page) == ["waiting", "excepted"]
        expect(page.locator("#filter-label")).to_have_value(tag)
        expect(page.locator("#sort")).to_have_value("label")
        expect(page.locator("#reverse")).to_be_checked()

        # Kill asks first: Cancel sends nothing, the dialog's Kill kills (with its message)
        page.goto(f"{board.url}/#/process/{holder}")
        expect(page.locator('[data-fact="state"]')).to_have_text("waiting")
        page.locator("#do-kill").click()
        expect(page.locator("#confirm-kill")).to_be_visible()
        expect(page.locator("#confirm-pid")).to_have_text(holder)
        page.locator("#kill-cancel").click()
        expect(page.locator("#confirm-kill")).to_be_hidden()
        expect(page.locator("#answer")).to_have_text("")
        assert controller.get_process(uuid.UUID(holder)).result(WAIT)["state_name"] == "waiting"
        page.locator("#do-kill").click()
        page.keyboard.press("Escape")  # Escape cancels too
        expect(page.locator("#confirm-kill")).to_be_hidden()
        expect(page.locator("#answer")).to_have_text("")
        page.locator("#do-kill").click()
        page.locator("#kill-message").fill("killed from the dialog")
        page.locator("#kill-confirm").click()
        expect(page.locator("#answer")).to_have_text("kill: true")
        assert controller.wait_for_process(uuid.UUID(holder), WAIT).result(WAIT + 2) == "killed"
        expect(page.locator("#p-history")).to_contain_text("killed from the dialog")

        assert board.stop() == 0, board.err_path.read_text()
        assert worker.stop() == 0, worker.err_path.read_text()
    finally:
        if comm is not None:
            comm.close()
        for served in (board, worker):
            if served is not None:
                served.close()
        delete_broker_objects(prefix)


def test_with_tokens_the_page_logs_in_and_a_reader_cannot_act(
    page: Page,  # noqa: F811
    broker_url: str,
    tmp_path: Path,
) -> None:
    prefix, names = unique_names()
    worker = start_worker(broker_url, names, tmp_path)
    board = comm = None
    token, read_token = "page-act-token", "page-read-token"
    env = _env(PROCESS_COMMS_DASHBOARD_TOKEN=token, PROCESS_COMMS_DASHBOARD_READ_TOKEN=read_token)
    try:
        board = start_dashboard(broker_url, names, tmp_path, env=env)
        comm = process_comms.connect(broker_url, **names)
        controller = process_comms.RemoteProcessThreadController(comm)
        holder = str(controller.launch_process(f"{PROCS}:Holder", nowait=True).result(WAIT))

        page.goto(board.url + "/")
        expect(page.locator("#login")).to_be_visible()  # nothing is read without a token
        expect(page.locator("#processes tbody tr")).to_have_count(0)
        page.locator("#token").fill("wrong")
        page.locator("#login button[type=submit]").click()
        expect(page.locator("#login-error")).to_contain_text("Unauthorized")
        page.locator("#token").fill(read_token)
        page.locator("#login button[type=submit]").click()
        expect(page.locator("#login-error")).to_have_text("")
        expect(page.locator("#token")).to_have_value("")  # the field is emptied: the token stays nowhere
        expect(_row(page, holder)).to_have_attribute("data-state", "waiting")
        expect(page.locator("#role")).to_have_text("read-only")
        expect(page.locator("#live")).to_have_text("live")  # the event stream carries the cookie too
        # the token is kept nowhere a script can reach: the cookie is HttpOnly, the storages are empty
        assert page.evaluate("document.cookie") == ""
        assert page.evaluate("sessionStorage.length + localStorage.length") == 0
        assert read_token not in page.content()

        page.reload()  # the session outlives a reload
        expect(_row(page, holder)).to_be_visible()
        page.goto(f"{board.url}/#/process/{holder}")
        expect(page.locator('[data-fact="state"]')).to_have_text("waiting")
        expect(page.locator("#do-kill")).to_be_hidden()  # a reader cannot act

        page.locator("#token").fill(token)  # the form stays: logging in with the full token allows acting
        page.locator("#login button[type=submit]").click()
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#role")).to_have_text("")
        page.locator("#do-kill").click()
        page.locator("#kill-confirm").click()
        expect(page.locator("#answer")).to_have_text("kill: true")
        expect(page.locator('[data-fact="state"]')).to_have_text("killed")
        assert page.evaluate("document.cookie") == ""
        assert board.stop() == 0, board.err_path.read_text()
        assert worker.stop() == 0, worker.err_path.read_text()
        for secret in (token, read_token):
            assert secret not in board.err_path.read_text()
    finally:
        if comm is not None:
            comm.close()
        for served in (board, worker):
            if served is not None:
                served.close()
        delete_broker_objects(prefix)
