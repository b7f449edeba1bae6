"""Extra RabbitMQ nodes for tests that break a broker: a spare node and a three-node cluster.

The suite's RabbitMQ on 5672 is shared and must stay up (issues 13 and 15), so a test that stops a broker,
closes its connections or needs a cluster starts nodes of its own from the installed RabbitMQ: each with its
own node name, ports, data directories under a temporary directory, Erlang cookie (a HOME of its own, used by
the server and by every `rabbitmqctl` call for it) and no plugins. Every call is bounded; `stop()` always
ends the Erlang VM (SIGKILL if a graceful stop hangs) and removes the directories.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

#: Seconds a node may take to boot (about 7 s on the 2-core CI machine) and to stop gracefully.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: Seconds one `rabbitmqctl` call may take (the CLI itself needs about 0.7 s to start).
CTL_TIMEOUT = 60.0
#: Consecutive free ports per node: AMQP, Erlang distribution, and a range for the CLI's own distribution.
_PORTS_PER_NODE = 10
#: Where the ports are picked: below Linux's ephemeral range (32768+), so outgoing connections do not race us.
_PORT_RANGE = (10000, 30000)
_DIR_PREFIX = "pc-rabbit-"


class RabbitNodeError(RuntimeError):
    """A test node did not start, did not answer `rabbitmqctl`, or did not form a cluster."""


def rabbit_scripts() -> Path | None:
    """The directory of RabbitMQ's own scripts, or None when RabbitMQ is not installed.

    Debian's /usr/sbin/rabbitmqctl wrapper re-runs itself as the rabbitmq user with that user's HOME, which
    would replace our cookie by the main node's, so the scripts it wraps (/usr/lib/rabbitmq/bin) are used.
    """
    debian = Path("/usr/lib/rabbitmq/bin")
    if (debian / "rabbitmq-server").exists():
        return debian
    found = shutil.which("rabbitmq-server")
    return Path(found).resolve().parent if found else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nobody listens on (random, so parallel runs rarely meet)."""
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        if all(_port_free(base + offset) for offset in range(count)):
            return base
    raise RabbitNodeError(f"no {count} consecutive free ports in {_PORT_RANGE}")


def beams_under(path: Path) -> list[int]:
    """OS pids of Erlang VMs whose HOME is under ``path`` (our nodes; Linux /proc, empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if argv and argv[0].endswith(b"beam.smp") and any(str(path).encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


class RabbitNode:
    """One extra RabbitMQ node of the installed release, on free ports, with its own cookie and data."""

    def __init__(self, name: str | None = None, *, cookie: str | None = None) -> None:
        scripts = rabbit_scripts()
        if scripts is None:
            raise RabbitNodeError("RabbitMQ is not installed: no rabbitmq-server on PATH")
        self._scripts = scripts
        self.nodename = f"{name or 'pc-spare-' + uuid.uuid4().hex[:8]}@localhost"
        self.cookie = cookie or secrets.token_hex(20)
        # the owner's pid in the name says whose node a leftover directory was
        self.base = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        self.port = 0
        self.dist_port = 0
        self._ctl_ports = (0, 0)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self.start_seconds = 0.0
        self._started_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> RabbitNode:
        """Start the node and wait (bounded) until its RabbitMQ application runs."""
        self.launch()
        self.wait_started(timeout)
        return self

    def launch(self) -> None:
        """Start the Erlang VM without waiting (a cluster launches its nodes together, then waits)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RabbitNodeError(f"{self.nodename} is already running")
        self._started_at = time.monotonic()
        base = _free_ports(_PORTS_PER_NODE)
        self.port, self.dist_port = base, base + 1
        self._ctl_ports = (base + 2, base + _PORTS_PER_NODE - 1)
        self.base.mkdir(exist_ok=True)
        for sub in ("home", "mnesia", "log", "conf.d"):
            shutil.rmtree(self.base / sub, ignore_errors=True)  # a relaunch after a port clash starts afresh
            (self.base / sub).mkdir()
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        (self.base / "enabled_plugins").write_text("")
        (self.base / "rabbitmq.conf").write_text("# a test node of tests/brokers.py: defaults only\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        command = [str(self._scripts / "rabbitmq-server")]
        setpriv = shutil.which("setpriv")
        if setpriv:  # the VM dies with the test run even if the run itself is killed (Linux PR_SET_PDEATHSIG)
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        if self._stdout is not None:
            self._stdout.close()
        self._stdout = open(self.base / "log" / "stdout.log", "wb")  # closed by stop()
        self.proc = subprocess.Popen(
            command,
            env=self._env(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C of the test run reaches stop(), not the node
        )

    def wait_started(self, timeout: float = START_TIMEOUT, *, relaunches: int = 2) -> None:
        """Wait (bounded) until the application runs; relaunch on other ports if one was taken meanwhile."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            try:
                # `wait --pid` waits for the VM's distribution, then the application, and gives up when the
                # OS process ends; `await_startup` alone fails at once while the VM is not reachable yet
                self.ctl("wait", "--pid", str(self.proc.pid), "--timeout", str(int(left)), timeout=left + 15)
                self.ctl("await_startup", "--timeout", str(int(max(1.0, deadline - time.monotonic()))))
            except RabbitNodeError as exc:
                self.proc.poll()
                if self.proc.returncode is not None and relaunches > 0 and "eaddrinuse" in self.log_tail():
                    relaunches -= 1
                    self.launch()
                    continue
                raise RabbitNodeError(f"{self.nodename} did not start: {exc}\n{self.log_tail()}") from None
            self.start_seconds = time.monotonic() - self._started_at
            return

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node (SIGKILL of its VM if a graceful stop does not end it in time), remove its directories.

        Idempotent; safe on a node that never started or already died.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                self.ctl("stop", timeout=timeout)
            except RabbitNodeError:
                pass  # hung or unreachable: the VM is killed below
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the VM and its port programs
                proc.wait(15)
        for pid in beams_under(self.base):  # a VM that escaped the handle (another start script)
            os.kill(pid, signal.SIGKILL)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        deadline = time.monotonic() + 15
        while beams_under(self.base) and time.monotonic() < deadline:
            time.sleep(0.05)  # a SIGKILLed process disappears from /proc within milliseconds
        shutil.rmtree(self.base, ignore_errors=True)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (clients lose their connections; the VM keeps running)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait (bounded) until it runs."""
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT)))

    def join(self, other: RabbitNode) -> None:
        """Make this node a member of ``other``'s cluster (its own data is reset)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", other.nodename)
        self.ctl("start_app")

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- access ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """AMQP URL of the node (guest may connect from localhost only, which this is)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run `rabbitmqctl -q -n NODE ...` with this node's cookie (bounded) and return its output."""
        command = [str(self._scripts / "rabbitmqctl"), "-q", "-n", self.nodename, *args]
        try:
            out = subprocess.run(
                command, env=self._env(), cwd=self.base, capture_output=True, text=True, timeout=timeout, check=True
            )
        except subprocess.TimeoutExpired:
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} on {self.nodename}: no answer in {timeout} s")
        except subprocess.CalledProcessError as exc:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} exited {exc.returncode}: "
                f"{(exc.stderr or exc.stdout).strip()[-2000:]}"
            )
        return out.stdout

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's console output (for error messages)."""
        try:
            return (self.base / "log" / "stdout.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _env(self) -> dict[str, str]:
        # inherited RABBITMQ_* settings would point at the main node; /etc/rabbitmq is replaced by our files
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        env.setdefault("ERL_EPMD_ADDRESS", "127.0.0.1")  # only matters if this node starts epmd itself
        env.update(
            HOME=str(self.base / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CTL_DIST_PORT_MIN=str(self._ctl_ports[0]),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self._ctl_ports[1]),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.base / "plugins-expand"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(self.base / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # rabbitmq-server otherwise keeps a signal-proxy shell with the VM as its child; with this set
            # it execs the VM (sbin/rabbitmq-server of 3.10), so proc.pid is the VM and --pdeathsig reaches it
            RUNNING_UNDER_SYSTEMD="true",
        )
        return env


class RabbitCluster:
    """``size`` RabbitNodes sharing a cookie, joined into one cluster."""

    def __init__(self, size: int = 3) -> None:
        tag = uuid.uuid4().hex[:8]
        cookie = secrets.token_hex(20)
        self.nodes = [RabbitNode(f"pc-cluster-{tag}-{index}", cookie=cookie) for index in range(1, size + 1)]
        self.start_seconds = 0.0

    def start(self, timeout: float = 2 * START_TIMEOUT) -> RabbitCluster:
        """Boot every node at once, join the others to the first, check all run (bounded); stop all on failure."""
        began = time.monotonic()
        deadline = began + timeout
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_started(max(1.0, deadline - time.monotonic()))
            for node in self.nodes[1:]:
                node.join(self.nodes[0])
            expected = sorted(node.nodename for node in self.nodes)
            running = sorted(self.running_nodes())
            if running != expected:
                raise RabbitNodeError(f"the cluster runs {running}, not {expected}")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def running_nodes(self, via: RabbitNode | None = None) -> list[str]:
        """The cluster's running nodes as ``via`` (default: the first node) reports them."""
        status = json.loads((via or self.nodes[0]).ctl("cluster_status", "--formatter", "json"))
        return [str(name) for name in status["running_nodes"]]

    @property
    def urls(self) -> list[str]:
        """The AMQP URL of every node."""
        return [node.url for node in self.nodes]

    def stop(self) -> None:
        """Stop every node and remove its directories (idempotent)."""
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _require_rabbitmq() -> None:
    if rabbit_scripts() is None:
        pytest.fail("these tests start RabbitMQ nodes of their own: install RabbitMQ (rabbitmq-server on PATH)")
    _remove_stale_dirs()


def _remove_stale_dirs() -> None:
    """Remove the directories of runs that were killed (their VMs died with them: --pdeathsig)."""
    if not Path("/proc/self").exists():  # no way to tell a live owner from a dead one
        return
    for path in Path(tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*-*"):
        owner = path.name[len(_DIR_PREFIX) :].split("-")[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists() or beams_under(path):
            continue  # not ours, its owner still runs, or a VM still uses it
        shutil.rmtree(path, ignore_errors=True)


def _assert_gone(nodes: list[RabbitNode]) -> None:
    left = {node.nodename: beams_under(node.base) for node in nodes if beams_under(node.base)}
    assert not left, f"Erlang VMs of test nodes still running after teardown: {left}"


@pytest.fixture(scope="module")
def spare_broker() -> Iterator[RabbitNode]:
    """A RabbitMQ node of its own for one test module: stop it, close its connections, break it."""
    _require_rabbitmq()
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()
    _assert_gone([node])


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three RabbitMQ nodes in one cluster, shared by the whole run (a test that stops a node starts it again)."""
    _require_rabbitmq()
    cluster = RabbitCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    _assert_gone(cluster.nodes)
