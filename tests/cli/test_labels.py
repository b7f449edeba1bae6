"""``process-comms launch --label --time-limit`` and ``list --state ... --active --label --sort --reverse`` through
the real command: a CLI worker in its own OS process, each command a subprocess that exits at once (so a time
limit is enforced by the worker after its launching client has gone)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from process_comms.cli import main as cli
from process_comms.wire.launch_options import LABEL_MAX_CHARS
from tests.cli.test_commands import Run, rmq_cleanup, run  # noqa: F401 (fixtures)
from tests.cli.test_records import worker  # noqa: F401 (fixture)
from tests.waiting import wait_until

T = 60.0


def _launch(run: Run, *options: str) -> str:  # noqa: F811
    result = run("launch", "tests.procs:Waiter", "--nowait", *options)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _show(run: Run, pid: str) -> dict[str, Any]:  # noqa: F811
    shown = run("--json", "show", pid)
    assert shown.returncode == 0, shown.stderr
    record: dict[str, Any] = json.loads(shown.stdout)[0]["result"]
    return record


def _pids(run: Run, *args: str) -> list[str]:  # noqa: F811
    listed = run("--json", "list", *args)
    assert listed.returncode == 0, listed.stderr
    return [str(row["pid"]) for row in json.loads(listed.stdout)]


def test_launch_with_a_label_and_a_time_limit_then_list_by_them(run: Run, worker: Path) -> None:  # noqa: F811
    limited = _launch(run, "--label", "nightly build", "--time-limit", "2")
    labelled = _launch(run, "--label", "a nightly check")
    plain = _launch(run)
    record = wait_until(lambda: (r := _show(run, limited))["state_name"] == "killed" and r, T, "the time limit")
    assert record["status"] == "time limit of 2 s reached" and record["label"] == "nightly build"
    killed = next(h["time"] for h in record["history"] if h["event"] == "killed")
    assert record["deadline"] - 0.05 <= killed <= record["deadline"] + 5.0, killed - record["deadline"]

    assert _pids(run, "--label", "nightly") == [labelled, limited]  # a substring, newest first
    assert _pids(run, "--state", "killed", "--state", "waiting") == [plain, labelled, limited]
    assert _pids(run, "--active") == [plain, labelled]
    assert _pids(run, "--sort", "label") == [labelled, limited, plain]  # no label last
    assert _pids(run, "--sort", "label", "--reverse") == [plain, limited, labelled]
    assert _pids(run, "--reverse") == [limited, labelled, plain]  # oldest first

    table = run("list", "--active")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[-1] == "LABEL" and rows[1].endswith("a nightly check"), table.stdout
    shown = run("show", limited)
    assert "label:     nightly build" in shown.stdout and "time limit 2 s" in shown.stdout, shown.stdout
    status = run("status", labelled)
    assert status.stdout.splitlines()[0].split()[-1] == "LABEL" and "a nightly check" in status.stdout


def test_a_label_too_long_or_a_bad_time_limit_is_a_usage_error(run: Run) -> None:  # noqa: F811
    started = time.monotonic()
    long = run("launch", "tests.procs:Waiter", "--nowait", "--label", "x" * (LABEL_MAX_CHARS + 1))
    assert long.returncode == cli.EXIT_USAGE and f"at most {LABEL_MAX_CHARS} characters" in long.stderr
    for bad in ("0", "-3", "soon"):
        result = run("launch", "tests.procs:Waiter", "--nowait", "--time-limit", bad)
        assert result.returncode == cli.EXIT_USAGE, (bad, result.stderr)
    assert time.monotonic() - started < T  # refused before a broker is waited for
