"""The glue between ``process-comms daemon`` and circus, the process supervisor that keeps N workers running.

One daemon per profile lives in a state directory (:func:`state_dir`)::

    daemon.json   what to run: the worker's argv, how many, its working directory, the stop grace (0600)
    daemon.pid    the supervisor's pid, while it runs
    circus.log    the supervisor's own log (workers started, died, restarted)
    worker.log    every worker's stderr (its log), each line prefixed with a timestamp and the worker's pid
    worker.out    every worker's stdout, prefixed the same way: ``worker ready`` when it consumes
    ctl.sock, pub.sock   circus's control and event sockets (ZeroMQ ipc://, only this user may open the directory)

The supervisor is ``python -m process_comms.cli._supervisor STATE_DIR``: a circus arbiter with one watcher,
``worker``, that restarts a worker that dies and stops each with SIGTERM, then SIGKILL after the grace
(https://circus.readthedocs.io/en/latest/for-ops/configuration/ documents the watcher options used here).
The command side talks to it with circus's blocking client over ``ctl.sock``. circus is imported only in
the functions that need it, so the rest of the CLI runs without the ``daemon`` extra.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .base import EXIT_ERROR, CliError

__all__ = [
    "INSTALL_HINT",
    "LOG_BACKUPS",
    "LOG_MAX_BYTES",
    "WATCHER",
    "Files",
    "call",
    "require_circus",
    "serve",
    "state_dir",
]

#: The watcher's name inside circus.
WATCHER = "worker"
#: ``worker.log`` rolls over at this size, keeping this many old files (``worker.log.1`` ...): at most ~40 MiB.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: Seconds between two checks of the supervisor on its workers (circus's ``check_delay``).
CHECK_DELAY = 1.0
#: A worker that exits this many times in a row right after it was spawned stops the watcher (circus's
#: ``max_retry``): a worker that cannot start (a bad --persister) is not restarted forever.
MAX_RETRY = 5
#: Longest path of a Unix socket (``sun_path`` is 108 bytes on Linux, with its terminating NUL).
_MAX_SOCKET_PATH = 107

INSTALL_HINT = (
    "the daemon needs the optional dependency circus: pip install 'process_comms[daemon]' "
    "(from a clone: pip install '.[daemon]')"
)


def require_circus() -> None:
    """Raise a one-line :class:`CliError` with the install hint when circus is not installed."""
    try:
        import circus  # noqa: F401
    except ImportError:
        raise CliError(INSTALL_HINT, EXIT_ERROR) from None


def state_dir(profile: str, env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/process-comms/<profile>/`` (``~/.local/state/...`` when the variable is unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "process-comms" / profile


class Files:
    """The paths of one daemon's state directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / "daemon.json"
        self.pid = root / "daemon.pid"
        self.supervisor_log = root / "circus.log"
        self.worker_log = root / "worker.log"
        self.worker_out = root / "worker.out"
        self.control = root / "ctl.sock"
        self.events = root / "pub.sock"

    def endpoint(self, path: Path) -> str:
        """``ipc://PATH``; a path too long for a Unix socket is a usage error that says what to do."""
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise CliError(
                f"the state directory {self.root} is too long for a socket path: set XDG_STATE_HOME to a shorter one",
                EXIT_ERROR,
            )
        return f"ipc://{path}"

    def is_supervisor(self, pid: int) -> bool:
        """False when ``pid`` is some other program (a pid reused after a crash); True where /proc cannot tell."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except FileNotFoundError:
            return not os.path.isdir("/proc/self")  # no /proc (macOS): the control call tells
        except OSError:
            return True
        # `python -m process_comms.cli._supervisor ROOT`, or its title when setproctitle is installed (serve())
        return os.fsencode(str(self.root)) in b" ".join(argv)

    def read_pid(self) -> int | None:
        """The pid in ``daemon.pid``, or None when there is none (or it is not a number)."""
        try:
            text = self.pid.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None


def number_in(answer: Mapping[str, object], key: str) -> float:
    """The number ``answer[key]`` of a circus answer or of the daemon's spec file (JSON both); else CliError."""
    value = answer.get(key)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    raise CliError(f"the daemon's {key} is {value!r}, not a number", EXIT_ERROR)


def numbers_in(answer: Mapping[str, object], key: str) -> list[int]:
    """The list of integers ``answer[key]`` (the workers' pids); else CliError."""
    values = answer.get(key)
    if isinstance(values, list):
        return [int(number_in({key: value}, key)) for value in values]
    raise CliError(f"the daemon's {key} is {values!r}, not a list", EXIT_ERROR)


def call(files: Files, command: str, timeout: float, **properties: object) -> dict[str, object]:
    """Send one circus command to the supervisor and return its answer; no answer in ``timeout`` raises CliError."""
    from circus.client import CircusClient
    from circus.exc import CallError

    client = CircusClient(endpoint=files.endpoint(files.control), timeout=timeout)
    try:
        answer: dict[str, object] = client.call({"command": command, "properties": properties})
    except CallError as exc:
        raise CliError(f"the daemon's supervisor did not answer {command!r}: {exc}", EXIT_ERROR) from None
    finally:
        client.stop()
    if answer.get("status") != "ok":
        reason = answer.get("reason") or answer
        raise CliError(f"the daemon's supervisor refused {command!r}: {reason}", EXIT_ERROR)
    return answer


def _watcher(spec: Mapping[str, object], files: Files) -> dict[str, object]:
    argv = spec["argv"]
    if not isinstance(argv, list) or not argv:
        raise CliError(f"the daemon's spec {files.spec} has no command (argv)", EXIT_ERROR)

    def stream(path: Path) -> dict[str, object]:
        return {
            "class": "circus.stream.FileStream",
            "filename": str(path),
            "max_bytes": LOG_MAX_BYTES,
            "backup_count": LOG_BACKUPS,
            "time_format": "%Y-%m-%d %H:%M:%S",  # each line: "<time> [<pid>] | <the worker's line>"
        }

    return {
        "name": WATCHER,
        "cmd": str(argv[0]),
        "args": [str(arg) for arg in argv[1:]],
        "numprocesses": int(number_in(spec, "numprocesses")),
        "working_dir": spec["cwd"],
        "copy_env": True,  # the environment `daemon start` gave the supervisor: the broker URL, PYTHONPATH
        "graceful_timeout": number_in(spec, "stop_timeout"),  # SIGTERM, then SIGKILL after this many seconds
        "stop_signal": 15,
        "respawn": True,
        "max_retry": MAX_RETRY,
        "stderr_stream": stream(files.worker_log),
        "stdout_stream": stream(files.worker_out),
    }


def serve(root: Path) -> int:
    """Run the supervisor of the daemon in ``root`` until ``quit`` (``daemon stop``); the pid file lives as long."""
    import logging
    import logging.handlers

    from circus import get_arbiter
    from circus.pidfile import Pidfile

    files = Files(root)
    spec = json.loads(files.spec.read_text())
    handler = logging.handlers.RotatingFileHandler(
        files.supervisor_log, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS
    )  # bounded like worker.log: a crash-looping worker adds lines every second
    handler.setFormatter(logging.Formatter("%(asctime)s circus[%(process)d] [%(levelname)s] %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    for path in (files.control, files.events):  # left by a supervisor that was killed
        path.unlink(missing_ok=True)
    arbiter = get_arbiter(
        [_watcher(spec, files)],
        controller=files.endpoint(files.control),
        pubsub_endpoint=files.endpoint(files.events),
        check_delay=CHECK_DELAY,
        proc_name=f"process-comms-daemon {root}",  # the title `ps` shows when setproctitle is installed
    )
    pidfile = Pidfile(str(files.pid))
    pidfile.create(os.getpid())  # refuses (RuntimeError) while another live supervisor's pid is there
    try:
        arbiter.start()
    finally:
        pidfile.unlink()
        for path in (files.control, files.events):
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
