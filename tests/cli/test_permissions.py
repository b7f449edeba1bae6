"""``process-comms permissions`` prints the least-privilege lines, with no broker needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from process_comms.transports.rmq.permissions import rabbitmqctl_lines

NAMES = ["--message-exchange", "p.messages", "--task-exchange", "p.tasks", "--task-queue", "p.process.queue"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROCESS_COMMS_BROKER"}
    return subprocess.run(
        [sys.executable, "-m", "process_comms.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_permissions_prints_the_rabbitmqctl_lines_without_a_broker() -> None:
    done = run("permissions", "--worker-user", "w", "--client-user", "c", "--vhost", "/aiida", *NAMES)
    assert done.returncode == 0, done.stderr
    expected = rabbitmqctl_lines(
        "w", "c", vhost="/aiida", message_exchange="p.messages", task_exchange="p.tasks", task_queue="p.process.queue"
    )
    assert done.stdout.splitlines() == expected
    assert all(line.startswith("rabbitmqctl set_") and " -p /aiida " in line for line in expected)


def test_permissions_as_json_and_its_usage_error() -> None:
    done = run("--json", "permissions", "--worker-user", "w", "--client-user", "c", *NAMES)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 6
    missing = run("permissions", "--worker-user", "w")
    assert missing.returncode == 2 and "--client-user" in missing.stderr
