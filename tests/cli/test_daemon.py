"""``process-comms daemon``: N workers under circus, per profile, through the real command and the real broker.

Each test has its own ``XDG_STATE_HOME`` and ``XDG_CONFIG_HOME`` under ``tmp_path`` and its own exchange and
queue names; whatever the test started is stopped (and, failing that, killed by pid) at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from process_comms.cli import main as cli
from process_comms.cli.config import ENV_PROFILE
from tests.cli.test_commands import rmq_cleanup  # noqa: F401 - a fixture: deletes the test's queue and exchanges
from tests.waiting import wait_until

psutil = pytest.importorskip("psutil")  # installed with circus (the `daemon` extra, in the `test` extra)

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "process_comms.cli"]
RUN_TIMEOUT = 60
#: Seconds within which the supervisor replaces a killed worker, or a count change shows in `workers`.
SETTLE_TIMEOUT = 30
PROFILE = "night"

pytestmark = pytest.mark.broker

Run = Callable[..., "subprocess.CompletedProcess[str]"]


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _started_here(state: Path) -> list[int]:
    """Pids of the processes whose environment has this test's ``XDG_STATE_HOME``: the supervisor, its workers."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("XDG_STATE_HOME") == str(state) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


class Daemon:
    """Runs ``process-comms --profile night ...`` with this test's state and config directories."""

    def __init__(self, tmp_path: Path, broker_url: str, names: dict[str, str]) -> None:
        self.state = tmp_path / "state"
        config = tmp_path / "config"
        (config / "process-comms").mkdir(parents=True)
        prefix = names["message_exchange"].removesuffix(".messages")
        (config / "process-comms" / "config.toml").write_text(
            f'[profiles.{PROFILE}]\nbroker = "{broker_url}"\nprefix = "{prefix}"\n'
            f'store = "sqlite:///{tmp_path}/store.db"\ntimeout = 30\n'
        )
        self.env = {k: v for k, v in os.environ.items() if k not in (cli.ENV_BROKER, ENV_PROFILE)}
        self.env.update(XDG_STATE_HOME=str(self.state), XDG_CONFIG_HOME=str(config), PYTHONPATH=str(ROOT))
        self.dir = self.state / "process-comms" / PROFILE
        self.seen: set[int] = set()  # every supervisor and worker pid the test saw: none may outlive it

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--profile", PROFILE, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env or self.env,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.ok("--json", "daemon", "status").stdout)
        self.seen.update([answer["supervisor"], *answer["workers"]])
        return answer

    def fleet_pids(self) -> set[int]:
        """The pids of the workers that answer ``process-comms workers`` on this test's broker names."""
        return {int(info["pid"]) for info in json.loads(self.ok("--json", "workers").stdout)}


@pytest.fixture
def daemon(
    tmp_path: Path,
    broker_url: str,
    names: dict[str, str],
    rmq_cleanup: None,  # noqa: F811
) -> Iterator[Daemon]:
    d = Daemon(tmp_path, broker_url, names)
    try:
        yield d
    finally:
        if (d.dir / "daemon.pid").exists():
            d.run("daemon", "stop")
        for pid in {*d.seen, *_started_here(d.state)}:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_start_kill_incr_decr_logs_stop(daemon: Daemon) -> None:
    started = daemon.ok("daemon", "start", "2", "--allow", "tests.procs", "--stop-timeout", "10")
    assert "2 worker(s)" in started.stdout, started.stdout
    first = daemon.status()
    assert first["numprocesses"] == 2 and len(first["workers"]) == 2, first
    assert (daemon.dir / "daemon.pid").read_text().strip() == str(first["supervisor"])
    assert {first["supervisor"], *first["workers"]} <= set(_started_here(daemon.state))
    assert wait_until(
        lambda: daemon.fleet_pids() == set(first["workers"]),
        SETTLE_TIMEOUT,
        "both workers answer `workers`",
        interval=0.2,
    )

    again = daemon.run("daemon", "start", "--allow", "tests.procs")  # the profile's store: no --persister
    assert again.returncode == 1 and "already runs" in again.stderr, again.stderr

    victim = first["workers"][0]
    os.kill(victim, signal.SIGKILL)

    def replaced_status() -> dict[str, Any] | None:
        now = daemon.status()
        return now if victim not in now["workers"] and len(now["workers"]) == 2 else None

    replaced = wait_until(replaced_status, SETTLE_TIMEOUT, "the supervisor replaces the killed worker", interval=0.2)
    assert replaced["supervisor"] == first["supervisor"]
    assert wait_until(
        lambda: daemon.fleet_pids() == set(replaced["workers"]),
        SETTLE_TIMEOUT,
        "the new worker answers `workers`",
        interval=0.2,
    )

    assert "3 worker(s)" in daemon.ok("daemon", "incr").stdout
    three = daemon.status()
    assert three["numprocesses"] == 3 and len(three["workers"]) == 3, three
    assert wait_until(
        lambda: daemon.fleet_pids() == set(three["workers"]),
        SETTLE_TIMEOUT,
        "three workers answer `workers`",
        interval=0.2,
    )

    assert "1 worker(s)" in daemon.ok("daemon", "decr", "2").stdout
    one = daemon.status()
    assert one["numprocesses"] == 1 and len(one["workers"]) == 1, one
    assert wait_until(
        lambda: daemon.fleet_pids() == set(one["workers"]), SETTLE_TIMEOUT, "one worker answers `workers`", interval=0.2
    )
    too_many = daemon.run("daemon", "decr", "5")
    assert too_many.returncode == 2 and "only 1 worker(s) run" in too_many.stderr, too_many.stderr

    logs = daemon.ok("daemon", "logs", "--lines", "400").stdout.splitlines()
    for pid in three["workers"]:  # each worker's own log lines, marked with its pid
        assert any(f"[{pid}] |" in line and "worker on amqp://" in line for line in logs), (pid, logs[-20:])
    assert any("received SIGTERM: stopping gracefully" in line for line in logs)  # the two that decr stopped
    assert all("guest:guest@" not in line for line in logs)  # the broker's password is masked

    stopped = daemon.ok("daemon", "stop")
    assert "stopped" in stopped.stdout and "killed" not in stopped.stdout, stopped.stdout
    left = [pid for pid in daemon.seen if not _gone(pid)]
    assert left == [], f"still running after `daemon stop`: {left}"
    assert _started_here(daemon.state) == []
    assert not (daemon.dir / "daemon.pid").exists()

    status = daemon.run("daemon", "status")
    assert status.returncode == 1, status
    assert status.stderr.startswith("process-comms: error: no daemon runs for profile 'night'"), status.stderr
    assert len(status.stderr.strip().splitlines()) == 1


def test_stop_hands_back_a_running_process(daemon: Daemon) -> None:
    daemon.ok("daemon", "start", "1", "--allow", "tests.procs")
    pid = daemon.ok("launch", "tests.procs:Waiter", "--nowait", "--persist").stdout.strip()
    assert wait_until(
        lambda: "waiting" in daemon.run("status", pid).stdout,
        SETTLE_TIMEOUT,
        "the daemon's worker runs the process",
        interval=0.2,
    )
    daemon.status()
    daemon.ok("daemon", "stop")
    logs = daemon.ok("daemon", "logs").stdout
    assert f"handed back 1 process(es) to the queue: ['{pid}']" in logs, logs
    assert all(_gone(one) for one in daemon.seen)
    daemon.ok("daemon", "start", "1", "--allow", "tests.procs")  # a new worker continues it
    assert wait_until(
        lambda: "waiting" in daemon.run("status", pid).stdout,
        SETTLE_TIMEOUT,
        "the next daemon continues the process",
        interval=0.2,
    )
    daemon.status()


def test_a_worker_that_cannot_start_is_reported_and_nothing_is_left(daemon: Daemon) -> None:
    result = daemon.run("--timeout", "5", "daemon", "start", "2", "--allow", "tests.procs", "--persister", "bogus://x")
    assert result.returncode == 1, result
    assert "not ready within 5 s, so it was stopped" in result.stderr
    assert "unknown persister URL scheme 'bogus'" in result.stderr  # the worker's own error line, from its log
    assert not (daemon.dir / "daemon.pid").exists()
    assert daemon.run("daemon", "status").returncode == 1
    assert _started_here(daemon.state) == []  # neither the supervisor nor a worker it restarted


def test_not_running_and_usage(daemon: Daemon) -> None:
    status = daemon.run("daemon", "status")
    assert status.returncode == 1 and "no daemon runs for profile 'night'" in status.stderr, status.stderr
    stop = daemon.run("daemon", "stop")
    assert stop.returncode == 0 and "no daemon runs" in stop.stdout, stop
    assert daemon.run("daemon", "incr").returncode == 1
    no_allow = daemon.run("daemon", "start")
    assert no_allow.returncode == 2 and "--allow" in no_allow.stderr, no_allow.stderr


def test_without_circus_the_command_says_how_to_install_it(daemon: Daemon) -> None:
    hide_circus = (
        "import sys; sys.modules['circus'] = None; "  # as if the extra were not installed
        "from process_comms.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_circus, "--profile", PROFILE, "daemon", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=daemon.env,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "process-comms: error: the daemon needs the optional dependency circus: "
        "pip install 'process_comms[daemon]' (from a clone: pip install '.[daemon]')"
    )


def test_a_stale_pid_file_is_not_a_running_daemon(daemon: Daemon) -> None:
    daemon.dir.mkdir(parents=True)
    (daemon.dir / "daemon.pid").write_text(f"{os.getpid()}\n")  # a live pid, but not a supervisor (a reused pid)
    status = daemon.run("daemon", "status")
    assert status.returncode == 1 and "no daemon runs for profile 'night'" in status.stderr, status.stderr
    assert not (daemon.dir / "daemon.pid").exists()


def test_stop_kills_a_worker_that_does_not_stop_in_time(daemon: Daemon) -> None:
    daemon.ok("daemon", "start", "1", "--allow", "tests.procs", "--stop-timeout", "1")
    (stuck,) = daemon.status()["workers"]
    os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM: only SIGKILL, after the grace, ends it
    began = time.monotonic()
    stopped = daemon.ok("daemon", "stop")
    took = time.monotonic() - began
    assert "stopped" in stopped.stdout, stopped.stdout
    assert _gone(stuck) and _started_here(daemon.state) == []
    assert took < 1 + 10 + 5, took  # the grace, the margin `stop` allows the supervisor, and start-up time
    assert not (daemon.dir / "daemon.pid").exists()
