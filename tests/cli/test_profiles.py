"""Profiles, ``--prefix``, ``--version``, completion and one-line connection failures, through the real command."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from process_comms.cli import main as cli
from process_comms.cli.config import ENV_PROFILE, load_profile, prefix_names
from tests.cli.test_commands import LineReader

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "process_comms.cli"]
RUN_TIMEOUT = 60
READY_TIMEOUT = 30
STOP_TIMEOUT = 15
#: Nothing listens here: connecting fails at once with "connection refused".
DEAD_BROKER = "amqp://guest:{password}@127.0.0.1:1/"


def _prefix(names: dict[str, str]) -> str:
    prefix = names["message_exchange"].removesuffix(".messages")
    assert prefix_names(prefix) == names  # tests/conftest.py's names follow the CLI's convention
    return prefix


def _write_config(home: Path, text: str) -> None:
    (home / "process-comms").mkdir(parents=True, exist_ok=True)
    (home / "process-comms" / "config.toml").write_text(text)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty ``$XDG_CONFIG_HOME`` of this test's own."""
    path = tmp_path / "config"
    path.mkdir()
    return path


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (cli.ENV_BROKER, ENV_PROFILE)}
    env.update(XDG_CONFIG_HOME=str(home), **extra)
    return env


def _run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env or _env(home)
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("process-comms: error: "), lines[0]
    return lines[0]


@pytest.fixture
def profile(home: Path, broker_url: str, names: dict[str, str]) -> Iterator[str]:
    """A profile ``t`` naming the test's broker and objects by prefix; the objects are deleted afterwards."""
    _write_config(home, f'[profiles.t]\nbroker = "{broker_url}"\nprefix = "{_prefix(names)}"\ntimeout = 20\n')
    yield "t"
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.queue_delete(queue=names["task_queue"])
        channel.exchange_delete(exchange=names["message_exchange"])
        channel.exchange_delete(exchange=names["task_exchange"])
    finally:
        connection.close()


@pytest.fixture
def worker(home: Path, profile: str, tmp_path: Path) -> Iterator[None]:
    """``process-comms --profile t worker``: ready when it prints 'worker ready', stopped by SIGTERM."""
    err_path = tmp_path / "worker.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*CLI, "--profile", profile, "worker", "--persister", "memory://", "--allow", "tests.procs"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(home),
        )
    try:
        assert proc.stdout is not None
        line = LineReader(proc.stdout).next(READY_TIMEOUT)
        assert line == "worker ready", f"worker said {line!r}; stderr: {err_path.read_text()}"
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


# -- --version and the config file, without a broker ------------------------------------------------
def test_version_is_the_installed_distributions(home: Path) -> None:
    result = _run(home, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"process-comms {importlib.metadata.version('process_comms')}"


def test_missing_profile_or_bad_config_is_a_usage_error(home: Path) -> None:
    no_file = _run(home, "--profile", "prod", "status", "1")
    assert no_file.returncode == cli.EXIT_USAGE
    assert "no profile 'prod'" in _one_line_error(no_file) and "config.toml" in no_file.stderr

    _write_config(home, '[profiles.dev]\nbroker = "amqp://127.0.0.1/"\n')
    from_env = _run(home, "status", "1", env=_env(home, PROCESS_COMMS_PROFILE="prod"))
    assert from_env.returncode == cli.EXIT_USAGE
    assert "no profile 'prod'" in _one_line_error(from_env) and "(profiles: dev)" in from_env.stderr

    for text, expected in (
        ("[profiles.dev\n", "not valid TOML"),
        ('[profiles.dev]\nbrokr = "amqp://127.0.0.1/"\n', "unknown key 'brokr'"),
        ("[profiles.dev]\ntimeout = -1\n", "greater than 0"),
    ):
        _write_config(home, text)
        result = _run(home, "--profile", "dev", "status", "1")
        assert result.returncode == cli.EXIT_USAGE, text
        assert expected in _one_line_error(result), text


def _permission_lines(home: Path, *options: str) -> str:
    """The rabbitmqctl lines of ``permissions`` (names appear there as regular expressions)."""
    result = _run(home, *options, "permissions", "--worker-user", "w", "--client-user", "c")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _names_in(lines: str) -> set[str]:
    candidates = {"kiwipy.messages", "kiwipy.tasks", "mine", "q1"}
    for prefix in ("from-profile", "cli", "aiida-1"):
        candidates |= set(prefix_names(prefix).values())
    return {name for name in candidates if re.search(rf"(?<![\w.\\-]){re.escape(re.escape(name))}(?![\w\\-])", lines)}


def test_names_come_from_the_command_line_then_the_profile(home: Path) -> None:
    _write_config(
        home, '[profiles.p]\nprefix = "from-profile"\n\n[profiles.q]\nprefix = "aiida-1"\ntask_queue = "q1"\n'
    )
    assert _names_in(_permission_lines(home)) == {"kiwipy.messages", "kiwipy.tasks"}  # no profile: kiwipy's
    assert _names_in(_permission_lines(home, "--profile", "p")) == set(prefix_names("from-profile").values())
    # --prefix beats the profile's names, and a name given beats both
    assert _names_in(_permission_lines(home, "--profile", "p", "--prefix", "cli")) == set(prefix_names("cli").values())
    assert _names_in(_permission_lines(home, "--profile", "p", "--task-queue", "mine")) == {
        "from-profile.messages",
        "from-profile.tasks",
        "mine",
    }
    # inside a profile, a name beats its prefix
    assert _names_in(_permission_lines(home, "--profile", "q")) == {"aiida-1.messages", "aiida-1.tasks", "q1"}


def test_profile_values_are_parsed(home: Path) -> None:
    _write_config(
        home,
        '[profiles.fleet]\nbroker = ["amqp://a:p@rmq1/v", "amqp://a:p@rmq2/v"]\nprefix = "x"\ntimeout = 5\n'
        'store = "postgresql://u@db/aiida"\n',
    )
    fleet = load_profile("fleet", home / "process-comms" / "config.toml")
    assert fleet.broker == "amqp://a:p@rmq1/v,amqp://a:p@rmq2/v"  # the comma form --broker takes
    assert fleet.names == prefix_names("x") and fleet.timeout == 5.0 and fleet.store == "postgresql://u@db/aiida"


# -- connection failures ---------------------------------------------------------------------------
def test_connection_failure_is_one_line(home: Path) -> None:
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    result = _run(home, "--broker", DEAD_BROKER.format(password=secret), "status", "x")
    assert result.returncode == cli.EXIT_BROKER
    line = _one_line_error(result)  # before: a 'process-comms: log: aiormq.connection: ...' line came first
    assert "could not connect to amqp://guest:***@127.0.0.1:1/" in line
    assert secret not in result.stdout + result.stderr


def test_the_broker_comes_from_the_command_line_then_the_profile_then_the_environment(
    home: Path, broker_url: str
) -> None:
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    _write_config(home, f'[profiles.dead]\nbroker = "{DEAD_BROKER.format(password=secret)}"\n')
    pid = str(uuid.uuid4())
    from_profile = _run(home, "--profile", "dead", "status", pid, env=_env(home, PROCESS_COMMS_BROKER=broker_url))
    assert from_profile.returncode == cli.EXIT_BROKER  # the chosen profile beats PROCESS_COMMS_BROKER
    assert "127.0.0.1:1" in _one_line_error(from_profile) and secret not in from_profile.stderr
    explicit = _run(home, "--profile", "dead", "--broker", broker_url, "status", pid)
    assert explicit.returncode == cli.EXIT_UNREACHABLE, explicit.stderr  # connected: nobody holds the pid


# -- with a worker started from the profile -----------------------------------------------------------
def test_a_profile_replaces_the_global_options(home: Path, worker: None, names: dict[str, str]) -> None:
    launched = _run(
        home, "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 2}', env=_env(home, **{ENV_PROFILE: "t"})
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout) == {"sum": 3}
    queue = _run(home, "--profile", "t", "--json", "queue")
    assert queue.returncode == 0, queue.stderr
    assert json.loads(queue.stdout) == {"queue": names["task_queue"], "messages": 0, "consumers": 1}
    other = _run(home, "--profile", "t", "queue", "--task-queue", f"{names['task_queue']}.other")
    assert other.returncode == cli.EXIT_ERROR and ".other' does not exist" in _one_line_error(other)


def test_watch_lines_carry_the_time_and_the_class(home: Path, worker: None) -> None:
    watch = subprocess.Popen(
        [*CLI, "--profile", "t", "--json", "watch", "--count", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(home),
    )
    try:
        assert watch.stdout is not None
        reader = LineReader(watch.stdout)
        # the watcher subscribes before it prints anything, possibly in the middle of a launch (it then sees
        # only that launch's last state changes): launch until it has printed its three lines or ended
        events: list[dict[str, Any]] = []
        ended = False
        for _ in range(10):
            assert (
                _run(home, "--profile", "t", "launch", "tests.procs:Add", "--inputs", '{"a": 1, "b": 1}').returncode
                == 0
            )
            while not ended and not reader.lines.empty():
                line = reader.next(RUN_TIMEOUT)
                ended = line is None
                if line is not None:
                    events.append(json.loads(line))
            if ended or len(events) >= 3:
                break
        while not ended and (line := reader.next(RUN_TIMEOUT)) is not None:
            events.append(json.loads(line))
        assert watch.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=STOP_TIMEOUT)
    assert len(events) == 3
    for event in events:
        assert set(event) == {"time", "pid", "class", "from", "to"}
        assert event["class"] == "tests.procs:Add"  # asked once per pid, even after the process ended


# -- shell completion ------------------------------------------------------------------------------
def _script(home: Path, shell: str, tmp_path: Path) -> Path:
    result = _run(home, "completion", shell)
    assert result.returncode == 0, result.stderr
    path = tmp_path / f"completion.{shell}"
    path.write_text(result.stdout)
    return path


def _bash_complete(script: Path, words: list[str], env: dict[str, str]) -> list[str]:
    """COMPREPLY of the generated function for ``words`` (the last one is being completed)."""
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(word) for word in words)}); COMP_CWORD={len(words) - 1}\n"
        "_process_comms; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_completes_commands_options_and_choices(home: Path, tmp_path: Path) -> None:
    script = _script(home, "bash", tmp_path)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert checked.returncode == 0, checked.stderr
    text = script.read_text()
    for command in ("worker", "launch", "status", "list", "show", "report", "pause", "play", "kill", "watch", "queue"):
        assert command in text
    env = _env(home)
    exe = "process-comms"
    assert _bash_complete(script, [exe, "st"], env) == ["status"]
    assert _bash_complete(script, [exe, "--profile", "x", "list", "--st"], env) == ["--state", "--store"]
    assert _bash_complete(script, [exe, "list", "--state", "r"], env) == ["running"]
    assert _bash_complete(script, [exe, "completion", "f"], env) == ["fish"]
    assert "--version" in _bash_complete(script, [exe, "--v"], env)
    assert _bash_complete(script, [exe, "status", "--v"], env) == []  # --version only before a command


def test_bash_completion_completes_pids_from_list(home: Path, tmp_path: Path, worker: None) -> None:
    launched = _run(home, "--profile", "t", "launch", "tests.procs:Waiter", "--nowait")
    assert launched.returncode == 0, launched.stderr
    pid = launched.stdout.strip()
    script = _script(home, "bash", tmp_path)
    # the console script as a shell finds it; the profile typed on the line reaches `list`
    exe = str(Path(sys.executable).with_name("process-comms"))
    assert _bash_complete(script, [exe, "--profile", "t", "kill", pid[:4]], _env(home)) == [pid]
    assert _run(home, "--profile", "t", "kill", pid).returncode == 0


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_is_valid_and_registers(home: Path, tmp_path: Path) -> None:
    script = _script(home, "zsh", tmp_path)
    checked = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert checked.returncode == 0, checked.stderr
    program = f"autoload -U compinit && compinit -u -D && source {script} && print -r -- $_comps[process-comms]"
    result = subprocess.run(["zsh", "-fc", program], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0 and result.stdout.strip() == "_process_comms", result.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_completes_commands_and_choices(home: Path, tmp_path: Path) -> None:
    script = _script(home, "fish", tmp_path)
    program = f"source {script}; complete -C 'process-comms st'; echo ==; complete -C 'process-comms list --state '"
    result = subprocess.run(
        ["fish", "-c", program], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env(home)
    )
    assert result.returncode == 0, result.stderr
    commands, states = result.stdout.split("==\n")
    assert [line.split("\t")[0] for line in commands.splitlines()] == ["status"]
    assert {line.split("\t")[0] for line in states.splitlines()} == {
        "created",
        "running",
        "waiting",
        "finished",
        "excepted",
        "killed",
    }
