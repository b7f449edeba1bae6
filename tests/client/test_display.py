"""The text forms of process_comms.client.display: StatusTable's two layouts and Progress's bare bar.

Pure tests (no broker, no kernel); the notebook forms are checked in tests/test_notebook.py.
"""

from __future__ import annotations

import concurrent.futures
import io
from typing import Any

import process_comms
from process_comms.client.display import Progress, StatusTable


class _Tty(io.StringIO):
    """A text stream that says it is a terminal, so Progress redraws its line in place."""

    def isatty(self) -> bool:
        return True


def _done(value: Any) -> concurrent.futures.Future[Any]:
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut.set_result(value)
    return fut


def _table() -> StatusTable:
    return StatusTable(
        {
            "p-1": {"state_name": "waiting", "paused": True, "status": "held\n  for   review", "class": "m:Waiter"},
            "p-22": {"state": "ProcessState.RUNNING", "paused": None, "status": None},
            "gone": process_comms.ProcessUnreachable("process gone is not reachable"),
        }
    )


def test_status_table_plain_lines() -> None:
    assert _table().lines("plain") == [
        "PID   STATE    PAUSED  STATUS                         CLASS",
        "p-1   waiting  yes     held for review                m:Waiter",
        "p-22  running  -       -                              -",
        "gone  error    -       process gone is not reachable  -",
    ]


def test_status_table_aligned_lines_are_its_str() -> None:
    table = _table()
    lines = table.lines()
    assert lines == table.lines("aligned") and "\n".join(lines) == str(table)
    assert lines[0].split() == ["pid", "state", "paused", "status", "class"]
    assert set(lines[1].replace(" ", "")) == {"-"}  # the rule under the header
    assert lines[2].startswith("p-1   waiting  yes     held\n  for   review")  # cells kept as they are
    assert lines[3] == "p-22  running"  # empty cells stay empty, trailing blanks cut


def test_status_table_plain_lines_of_no_rows_is_the_header() -> None:
    assert StatusTable({}).lines("plain") == ["PID  STATE  PAUSED  STATUS  CLASS"]


def test_progress_bar_style_redraws_in_place_on_a_terminal() -> None:
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    tty = _Tty()
    # interval > timeout: one frame at the start, one at the deadline, nothing in between
    bar = Progress("ignored", stream=tty, width=20, interval=10, notebook=False, style="bar")
    results = bar.track({"a": _done(1), "b": _done(2), "c": never}, timeout=0.05)
    assert results["a"] == 1 and results["b"] == 2 and isinstance(results["c"], process_comms.TimeoutError)
    assert tty.getvalue() == "\r[#############.......] 2/3" + "\r[#############.......] 2/3\n"

    # the first frame is drawn before the first wait, even when everything is done already
    all_done = _Tty()
    Progress(stream=all_done, width=10, notebook=False, style="bar").track([_done(1), _done(2)], timeout=1)
    assert all_done.getvalue() == "\r[##########] 2/2" + "\r[##########] 2/2\n"


def test_progress_bar_style_counts_failures_as_done_and_writes_lines_off_a_terminal() -> None:
    bad: concurrent.futures.Future[Any] = concurrent.futures.Future()
    bad.set_exception(ValueError("no"))
    stream = io.StringIO()
    outcomes = Progress("jobs", stream=stream, width=8, notebook=False, style="bar").track([_done(1), bad], timeout=1)
    assert outcomes[0] == 1 and isinstance(outcomes[1], ValueError)
    assert stream.getvalue() == "[########] 2/2\n" * 2  # the first frame, then the final one (always written)


def test_progress_full_style_is_the_default() -> None:
    stream = io.StringIO()
    Progress("jobs", stream=stream, width=4, notebook=False).track([_done(1)], timeout=1)
    assert stream.getvalue().startswith("jobs: [####] 1/1 done (")


# -- ended processes (issue 14): finished is a success, excepted/killed failures with their reason ---------
def _ended() -> StatusTable:
    from process_comms.client.display import PROGRESS_COLUMNS

    return StatusTable(
        {
            "ok": {"state_name": "finished", "paused": False, "progress": {"done": 3}, "class": "m:A", "record": True},
            "bad": {
                "state_name": "excepted",
                "paused": False,
                "exception": {"type": "ValueError", "message": "no", "traceback": "..."},
                "class": "m:B",
            },
            "cut": {"state_name": "killed", "paused": False, "status": "not needed", "class": "m:C"},
        },
        PROGRESS_COLUMNS,
    )


def test_ended_rows_say_how_they_ended() -> None:
    header, ok, bad, cut = _ended().lines("plain")
    assert header.split() == ["PID", "STATE", "PAUSED", "PROGRESS", "STATUS", "CLASS"]
    assert ok.split() == ["ok", "finished", "no", "done=3", "-", "m:A"]
    assert bad.split() == ["bad", "excepted", "no", "-", "ValueError:", "no", "m:B"]
    assert cut.split() == ["cut", "killed", "no", "-", "not", "needed", "m:C"]
    rows = {row[0]: row for row in _ended().rows}
    assert rows["ok"][1:4] == ("finished", "no", "done=3")
    assert rows["bad"][4] == "ValueError: no" and rows["cut"][4] == "not needed"


def test_finished_rows_are_never_red() -> None:
    html = _ended()._repr_html_()
    assert '<tr class="finished" data-pid="ok">' in html
    assert '<tr class="failed" data-pid="bad">' in html and '<tr class="failed" data-pid="cut">' in html
    assert 'class="error"' not in html


def test_progress_counts_excepted_and_killed_as_failed_and_finished_as_done() -> None:
    stream = io.StringIO()
    futures = [_done("finished"), _done("excepted"), _done({"state_name": "killed"}), _done({"sum": 3})]
    Progress("ends", stream=stream, width=4, notebook=False).track(futures, timeout=1)
    assert stream.getvalue().splitlines()[-1].startswith("ends: [####] 4/4 done, 2 failed")
