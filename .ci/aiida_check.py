"""AiiDA's process control on process_comms, through its own daemon and verdi (run by `.ci/aiida`).

Usage: ``python .ci/aiida_check.py PROFILE VHOST WORKDIR`` in a venv with aiida-core and process_comms[aiida],
after ``verdi profile setup`` made PROFILE. It points the profile at the ``process_comms.rabbitmq`` broker (the
entry point in setup.cfg) on RabbitMQ's vhost VHOST, then checks, with every wait bounded:

1. ``verdi process repair`` re-creates the task of a process whose task was lost (checkpointed, never queued);
2. ``verdi devel rabbitmq tasks revive`` does the same with the daemon running, and both processes finish;
3. a WorkChain with a finished child and a live CalcJob child is paused, played, and killed: the kill is
   answered within seconds and kills the live child too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROFILE, VHOST, WORKDIR = sys.argv[1:4]
VERDI = str(Path(sys.executable).with_name("verdi"))
HERE = Path(__file__).resolve().parent
#: Seconds a verdi command may take; the daemon's start and stop and a kill get the same bound.
VERDI_TIMEOUT = 120
#: Seconds a process may take to reach an expected state.
STATE_TIMEOUT = 120
#: Seconds within which a kill of the parent must be answered (issue: it was never answered).
KILL_ANSWERED_WITHIN = 30


def verdi(*args: str, timeout: float = VERDI_TIMEOUT) -> str:
    """Run ``verdi -p PROFILE args`` with a deadline; its output, or exit with it on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    command = [VERDI, "-p", PROFILE, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    print(f"$ verdi {' '.join(args)}  [{time.monotonic() - start:.1f} s, exit {done.returncode}]")
    output = (done.stdout + done.stderr).strip()
    if output:
        print("  " + output.replace("\n", "\n  "))
    if done.returncode != 0:
        sys.exit(f"FAILED: verdi {' '.join(args)} exited {done.returncode}")
    return output


def wait_until(probe: Callable[[], Any], what: str, timeout: float = STATE_TIMEOUT) -> float:
    """Poll ``probe`` until it is truthy; the seconds it took, or exit after ``timeout``."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            sys.exit(f"FAILED: {what} not within {timeout} s")
        time.sleep(0.5)
    took = time.monotonic() - start
    print(f"  ok: {what} ({took:.1f} s)")
    return took


sys.path.insert(0, str(HERE))  # aiida_chain, as the daemon finds it on verdi's PYTHONPATH


def node(pk: int) -> Any:
    from aiida import orm

    return orm.load_node(pk)


def configure() -> int:
    """Point the profile at the process_comms broker on VHOST; a local computer and a bash code (its pk)."""
    from aiida import load_profile, orm
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    config = get_config()
    profile = config.get_profile(PROFILE)
    settings = {
        "broker_protocol": "amqp",
        "broker_username": "guest",
        "broker_password": "guest",
        "broker_host": "127.0.0.1",
        "broker_port": 5672,
        "broker_virtual_host": VHOST,
    }
    profile.set_process_controller(name="process_comms.rabbitmq", config=settings)
    config.update_profile(profile)
    config.store()
    load_profile(PROFILE, allow_switch=True)
    broker = get_manager().get_broker()
    print(f"  broker: {type(broker).__module__}.{type(broker).__name__}: {broker}")
    assert type(broker).__name__ == "ProcessCommsBroker", broker

    computer = orm.Computer(
        label="localhost",
        hostname="localhost",
        transport_type="core.local",
        scheduler_type="core.direct",
        workdir=str(Path(WORKDIR) / "scratch"),
    ).store()
    computer.configure(safe_interval=0)
    computer.set_minimum_job_poll_interval(1.0)
    code: int = orm.InstalledCode(computer=computer, filepath_executable="/bin/bash", label="bash").store().pk
    return code


def stuck_process() -> int:
    """A process whose task is lost: created and checkpointed as ``submit`` does, its continue task never sent."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from aiida_chain import Quick

    runner = get_manager().get_runner()
    process = instantiate_process(runner, Quick)
    runner.persister.save_checkpoint(process)
    process.close()
    pk: int = process.node.pk
    return pk


def main() -> None:
    started = time.monotonic()
    code = configure()
    from aiida import engine, orm
    from aiida_chain import Parent  # the daemon imports it from the same place (verdi's PYTHONPATH)

    print("== 1. verdi process repair re-creates a lost task")
    repaired = stuck_process()
    from aiida.manage import get_manager

    get_manager().reset_profile_storage()  # repair ends the profile's database sessions it finds: not ours
    output = verdi("process", "repair", "--force")
    assert str(repaired) in output, f"repair did not name process {repaired}"
    assert str(repaired) in verdi("devel", "rabbitmq", "tasks", "list"), "no task for the repaired process"

    print("== 2. verdi devel rabbitmq tasks revive, with the daemon running")
    revived = stuck_process()
    verdi("daemon", "start", "1")
    wait_until(lambda: node(repaired).is_finished_ok, f"repaired process {repaired} finished")
    assert not node(revived).is_terminated, "the process whose task was lost ran anyway"
    verdi("devel", "rabbitmq", "tasks", "revive", "--force", str(revived))
    wait_until(lambda: node(revived).is_finished_ok, f"revived process {revived} finished")

    print("== 3. pause, play and kill a WorkChain whose first child has finished")
    parent = engine.submit(Parent, code=orm.load_code(code), sleep=orm.Int(600)).pk  # loaded again: step 1 reset

    def live_child() -> Any:
        jobs = [child for child in node(parent).called if isinstance(child, orm.CalcJobNode)]
        return jobs and jobs[0].get_job_id() is not None and jobs[0]

    wait_until(live_child, "the CalcJob child's scheduler job runs")
    finished = [child for child in node(parent).called if not isinstance(child, orm.CalcJobNode)]
    assert finished and all(child.is_finished_ok for child in finished), finished
    verdi("process", "pause", str(parent))
    wait_until(lambda: node(parent).paused, "the parent is paused", 30)
    verdi("process", "play", str(parent))
    wait_until(lambda: not node(parent).paused, "the parent is played", 30)
    start = time.monotonic()
    verdi("process", "kill", "--timeout", str(KILL_ANSWERED_WITHIN), str(parent), timeout=KILL_ANSWERED_WITHIN + 30)
    wait_until(lambda: node(parent).is_killed, "the parent is killed", KILL_ANSWERED_WITHIN)
    print(f"  ok: the kill was answered and the parent killed in {time.monotonic() - start:.1f} s")
    wait_until(lambda: live_child().is_killed, "the live CalcJob child is killed", KILL_ANSWERED_WITHIN)
    verdi("daemon", "stop")
    print(f"aiida: every check passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
