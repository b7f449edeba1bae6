"""Rendering helpers for people watching processes: a status table and a progress display.

* :class:`StatusTable` shows ``{pid: status dict or exception}`` (what
  :meth:`RemoteProcessController.get_status_many` returns) as an HTML table in a notebook
  (``_repr_html_``) and as aligned text everywhere else (``str(table)``, or ``table.lines("plain")``
  for the form ``process-comms status`` prints); :func:`status_table` also accepts the
  ``{pid: future}`` mapping of the thread controller.
* :class:`Progress` waits for many futures under one deadline, showing how many are done: a live
  display in a notebook (when IPython is importable and a kernel runs it), a line on stderr otherwise
  (``style="bar"`` draws just the bar and the count, as ``process-comms`` does on a terminal).

Nothing here requires IPython.
"""

from __future__ import annotations

import concurrent.futures
import html
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TextIO, TypeVar, overload, runtime_checkable

from .. import defaults
from ..wire.messages import Pid, state_name
from ..wire.types import ProcessStatus
from .futures import outcomes, wait_all

__all__ = [
    "COLUMNS",
    "FAILED_STATES",
    "PROGRESS_COLUMNS",
    "TABLE_CSS_CLASS",
    "Progress",
    "ProgressStyle",
    "StatusTable",
    "TableStyle",
    "is_failure",
    "layout_columns",
    "progress_text",
    "status_table",
]

K = TypeVar("K")
T = TypeVar("T")

#: The columns of a :class:`StatusTable`, in order.
COLUMNS = ("pid", "state", "paused", "status", "class")
#: The columns with the process's progress too (what ``process-comms status`` prints).
PROGRESS_COLUMNS = ("pid", "state", "paused", "progress", "status", "class")
#: End states that are failures (shown with their reason); ``finished`` is a success.
FAILED_STATES = ("excepted", "killed")
#: Longest progress cell, in characters.
_MAX_PROGRESS = 40

#: CSS class of the ``<table>`` a :class:`StatusTable` renders (handy to find it in notebook outputs).
TABLE_CSS_CLASS = "process-comms-status"

#: The text forms of a :class:`StatusTable` (see :meth:`StatusTable.lines`).
TableStyle = Literal["aligned", "plain"]

#: The text forms of a :class:`Progress` display (see :class:`Progress`).
ProgressStyle = Literal["full", "bar"]


def _state_of(status: Mapping[str, object]) -> str:
    """The short state name: ``state_name`` if present, else ``ProcessState.RUNNING`` -> ``running``."""
    name = status.get("state_name")
    if isinstance(name, str) and name:
        return name
    return state_name(status.get("state"))


def _error_text(exc: BaseException) -> str:
    """An exception as shown in a table: its message (its type name if it has no message)."""
    return str(exc) or type(exc).__name__


def is_failure(outcome: object) -> bool:
    """True for an exception, an end state that is a failure (``excepted``, ``killed``), or a status dict in one."""
    if isinstance(outcome, BaseException):
        return True
    if isinstance(outcome, str):
        return outcome in FAILED_STATES
    return isinstance(outcome, Mapping) and _state_of(outcome) in FAILED_STATES


def _reason(status: Mapping[str, object]) -> str | None:
    """Why a process failed: its exception (from its record) or its status text (the kill message)."""
    exception = status.get("exception")
    if isinstance(exception, Mapping):
        return f"{exception.get('type') or 'error'}: {exception.get('message') or ''}".rstrip(": ")
    if isinstance(exception, str) and exception:
        return exception
    return None


def progress_text(progress: object) -> str:
    if not isinstance(progress, Mapping) or not progress:
        return ""
    text = " ".join(f"{key}={value}" for key, value in progress.items())
    return text if len(text) <= _MAX_PROGRESS else f"{text[: _MAX_PROGRESS - 3]}..."


def _cells(pid: Pid, status: Mapping[str, object] | BaseException) -> dict[str, str]:
    if isinstance(status, BaseException):
        return {"pid": str(pid), "state": "error", "status": _error_text(status)}
    paused = status.get("paused")
    text = status.get("status")
    if _state_of(status) in FAILED_STATES:
        text = _reason(status) or text
    cls = status.get("class") or status.get("process_string") or ""
    return {
        "pid": str(pid),
        "state": _state_of(status),
        "paused": "" if paused is None else ("yes" if paused else "no"),
        "progress": progress_text(status.get("progress")),
        "status": "" if text is None else str(text),
        "class": str(cls),
        "label": str(status.get("label") or ""),
    }


def _row(pid: Pid, status: Mapping[str, object] | BaseException, columns: Sequence[str] = COLUMNS) -> tuple[str, ...]:
    cells = _cells(pid, status)
    return tuple(cells.get(column, "") for column in columns)


def layout_columns(rows: Sequence[Sequence[str]], rule: bool) -> list[str]:
    """``rows`` (the header first) as lines of left-aligned columns two spaces apart, trailing blanks cut.

    With ``rule`` a line of dashes as wide as each column goes under the header.
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: Iterable[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(rows[0])]
    if rule:
        out.append(line("-" * w for w in widths))
    out.extend(line(row) for row in rows[1:])
    return out


class StatusTable:
    """A table of process statuses: HTML in a notebook, aligned text in a terminal.

    ``statuses`` maps each pid to its status dict (as ``get_status`` returns it, or a summary of
    ``list_processes``) or to the exception its status call ended with (shown as the exception's
    message, in state ``error``). A finished process is a success; an excepted or killed one shows its
    reason (HTML class ``failed``); only a failed status call is an ``error`` row.
    """

    def __init__(
        self, statuses: Mapping[Any, Mapping[str, object] | BaseException], columns: Sequence[str] = COLUMNS
    ) -> None:
        """Keep the rows of ``statuses`` in order, with ``columns`` (:data:`COLUMNS` or :data:`PROGRESS_COLUMNS`)."""
        self.statuses: dict[Any, Mapping[str, object] | BaseException] = dict(statuses)
        self.columns: tuple[str, ...] = tuple(columns)
        self.rows: list[tuple[str, ...]] = [_row(pid, s, self.columns) for pid, s in self.statuses.items()]

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<StatusTable of {len(self.rows)} process(es)>"

    def __str__(self) -> str:
        """The table as aligned text, one process per line under a header (``lines("aligned")``)."""
        return "\n".join(self.lines())

    def lines(self, style: TableStyle = "aligned") -> list[str]:
        """The table as lines of aligned columns: the header, then one line per process.

        ``"aligned"`` (what ``str(table)`` shows): the header as in :data:`COLUMNS`, a dashed rule
        under it, the cells as they are. ``"plain"`` (what ``process-comms status`` prints, handy for
        ``grep`` and ``awk``): an upper-case header, no rule, runs of whitespace (newlines included)
        in a cell collapsed to one space, and ``-`` in an empty cell.
        """
        if style == "plain":
            rows = [[c.upper() for c in self.columns]]
            rows += [[" ".join(cell.split()) or "-" for cell in row] for row in self.rows]
            return layout_columns(rows, rule=False)
        return layout_columns([self.columns, *self.rows], rule=True)

    def _repr_pretty_(self, printer: _Printer, cycle: bool) -> None:
        """IPython's plain-text form: the aligned table."""
        printer.text(repr(self) if cycle else str(self))

    def _repr_html_(self) -> str:
        """The table as HTML (every cell escaped); rows of failed status calls have class ``error``, those of
        excepted or killed processes class ``failed``, finished ones class ``finished``."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for (pid, status), row in zip(self.statuses.items(), self.rows, strict=True):
            if isinstance(status, BaseException):
                css = ' class="error"'
            elif is_failure(status):
                css = ' class="failed"'
            else:
                css = ' class="finished"' if _state_of(status) == "finished" else ""
            cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
            body.append(f'<tr{css} data-pid="{html.escape(str(pid))}">{cells}</tr>')
        return f'<table class="{TABLE_CSS_CLASS}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class _Printer(Protocol):
    """IPython's pretty printer, as ``_repr_pretty_`` is given it."""

    def text(self, obj: str) -> None: ...


def status_table(
    statuses: Mapping[Any, Mapping[str, object] | BaseException | concurrent.futures.Future[ProcessStatus]],
    timeout: float | None = None,
) -> StatusTable:
    """Build a :class:`StatusTable`; futures among the values are waited for under one deadline.

    ``status_table(await controller.get_status_many(pids))`` (asyncio controller) and
    ``status_table(thread_controller.get_status_many(pids), timeout=5)`` both work. A future still
    pending at the deadline (``timeout``, default :data:`process_comms.defaults.RPC_TIMEOUT`) is shown
    as a timeout error.
    """
    futures = {pid: v for pid, v in statuses.items() if isinstance(v, concurrent.futures.Future)}
    resolved = wait_all(futures, timeout) if futures else {}
    rows: dict[Any, Mapping[str, object] | BaseException] = {}
    for pid, value in statuses.items():
        outcome = resolved[pid] if pid in resolved else value
        if isinstance(outcome, (Mapping, BaseException)):
            rows[pid] = outcome
        else:
            rows[pid] = TypeError(f"not a status dict: {type(outcome).__name__}")
    return StatusTable(rows)


def _failed(fut: concurrent.futures.Future[T]) -> bool:
    """A done future that failed: cancelled, raised, or resolved to a failed end (``excepted``/``killed``)."""
    return fut.cancelled() or fut.exception() is not None or is_failure(fut.result())


class _ProgressView:
    """One state of a progress display, renderable as text and as HTML."""

    def __init__(
        self,
        description: str,
        done: int,
        failed: int,
        total: int,
        elapsed: float,
        width: int,
        style: ProgressStyle = "full",
    ) -> None:
        self.description, self.done, self.failed, self.total = description, done, failed, total
        self.elapsed, self.width, self.style = elapsed, width, style

    def __str__(self) -> str:
        filled = self.width if self.total == 0 else self.width * self.done // self.total
        if self.style == "bar":
            return f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}"
        bar = "#" * filled + "-" * (self.width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.description}: [{bar}] {self.done}/{self.total} done{failed} ({self.elapsed:.1f} s)"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        bar = f'<progress value="{self.done}" max="{max(self.total, 1)}"></progress>'
        if self.style == "bar":
            return f'<div class="process-comms-progress">{bar} {self.done}/{self.total}</div>'
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            '<div class="process-comms-progress">'
            f"{html.escape(self.description)}: "
            f'<progress value="{self.done}" max="{max(self.total, 1)}"></progress> '
            f"{self.done}/{self.total} done{html.escape(failed)} ({self.elapsed:.1f} s)"
            "</div>"
        )


class _DisplayHandle(Protocol):
    """What IPython's ``display(..., display_id=True)`` returns: a handle to update the output in place."""

    def update(self, obj: object) -> None: ...


@runtime_checkable
class _Kernel(Protocol):
    """An IPython shell; one in a notebook has a ``kernel``."""

    kernel: object


def _notebook_display() -> Callable[..., _DisplayHandle | None] | None:
    """IPython's ``display`` when running in a kernel (a notebook), else None; never requires IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or not isinstance(shell, _Kernel) or shell.kernel is None:
        return None
    return display


class Progress:
    """Waits for many futures under one deadline while showing how many are done.

    In a notebook the display updates in place (IPython's ``display(..., display_id=True)``);
    elsewhere it writes to ``stream`` (stderr by default): one line rewritten in place on a
    terminal (ended by a newline when the wait is over), a new line whenever the count changes otherwise.

    ``style="full"`` shows ``waiting: [######------] 3/6 done, 1 failed (0.4 s)``; ``style="bar"``
    only the bar and the count, ``[######......] 3/6`` (failures count as done; no description, no time).
    """

    def __init__(
        self,
        description: str = "waiting",
        *,
        stream: TextIO | None = None,
        width: int = 24,
        interval: float = 0.2,
        notebook: bool | None = None,
        style: ProgressStyle = "full",
    ) -> None:
        """``notebook=None`` detects a running kernel; ``interval`` is the shortest time between updates.

        ``width`` is the bar's length in characters; ``style`` is ``"full"`` or ``"bar"`` (see the class).
        """
        self.description = description
        self.stream = stream
        self.width = width
        self.interval = interval
        self.notebook = notebook
        self.style: ProgressStyle = style

    @overload
    def track(
        self, futures: Mapping[K, concurrent.futures.Future[T]], timeout: float | None = None
    ) -> dict[K, T | BaseException]: ...

    @overload
    def track(
        self, futures: Sequence[concurrent.futures.Future[T]], timeout: float | None = None
    ) -> list[T | BaseException]: ...

    def track(
        self,
        futures: Mapping[K, concurrent.futures.Future[T]] | Sequence[concurrent.futures.Future[T]],
        timeout: float | None = None,
    ) -> dict[K, T | BaseException] | list[T | BaseException]:
        """Wait for ``futures`` (at most ``timeout`` s, default 300) and return their outcomes.

        A mapping gives ``{key: result or exception}``; a sequence (list, tuple) gives the outcomes in order.
        As with :func:`process_comms.wait_all`, a future still pending at the deadline yields a
        :class:`process_comms.TimeoutError` (it is not cancelled) and a cancelled one a ``CancelledError``.
        """
        deadline_s = defaults.TASK_TIMEOUT if timeout is None else timeout
        if isinstance(futures, Mapping):
            return self._wait(dict(futures), deadline_s)
        results = self._wait(dict(enumerate(futures)), deadline_s)
        return [results[i] for i in range(len(results))]

    def _wait(self, items: dict[K, concurrent.futures.Future[T]], timeout: float) -> dict[K, T | BaseException]:
        started = time.monotonic()
        deadline = started + timeout
        pending = set(items.values())
        render = self._renderer()
        last_shown = -1.0
        while True:
            now = time.monotonic()
            finished = not pending or now >= deadline
            if finished or now - last_shown >= self.interval:
                done = sum(1 for f in items.values() if f.done())
                failed = sum(1 for f in items.values() if f.done() and _failed(f))
                view = _ProgressView(self.description, done, failed, len(items), now - started, self.width, self.style)
                render(view, finished)
                last_shown = now
            if finished:
                break
            wait = min(deadline - now, self.interval)
            _, still = concurrent.futures.wait(pending, timeout=wait, return_when=concurrent.futures.FIRST_COMPLETED)
            pending = set(still)
        return outcomes(items, timeout)

    def _renderer(self) -> Callable[[_ProgressView, bool], None]:
        display = _notebook_display() if self.notebook in (None, True) else None
        if display is not None:
            handle: list[_DisplayHandle | None] = []

            def show_in_notebook(view: _ProgressView, _final: bool) -> None:
                if not handle:
                    handle.append(display(view, display_id=True))
                elif handle[0] is not None:
                    handle[0].update(view)

            return show_in_notebook

        stream = self.stream if self.stream is not None else sys.stderr
        in_place = stream.isatty()
        shown_done = [-1]

        def show_as_text(view: _ProgressView, final: bool) -> None:
            if in_place:
                stream.write(f"\r{view}" + ("\n" if final else ""))
            elif final or shown_done[0] != view.done:
                stream.write(f"{view}\n")
            shown_done[0] = view.done
            stream.flush()

        return show_as_text
