"""A worker of a fleet (issue 15): several named queues with slots, ``list_workers`` and ``process-comms workers``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import process_comms
from process_comms.cli import workers as workers_cli
from process_comms.cli.main import CliError
from process_comms.cli.worker import parse_queue, queues_of
from process_comms.client import controller as controller_module
from process_comms.worker import launcher as _fleet  # the fleet (queues, slots, workers answer) lives in launcher.py
from process_comms.worker.persistence import InMemoryPersister
from tests.conftest import BROKER_URL
from tests.faults._support import ROOT, controller, prefix, workers
from tests.procs import Steps
from tests.waiting import wait_until
from tests.worker.test_takeover import steps_logged

__all__ = ["prefix", "workers"]  # fixtures

T = 20.0


@pytest.fixture
def gpu_queue(prefix: str) -> Iterator[str]:
    """The named queue ``gpu`` of the test's installation, deleted afterwards (the prefix fixture deletes the rest)."""
    yield f"{prefix}.process.queue.gpu"
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        connection.channel().queue_delete(f"{prefix}.process.queue.gpu")
    finally:
        connection.close()


# -- pure: the --queue syntax, the queues a Worker takes, one subject on both sides ----------------------------
def test_queue_options_name_queues_and_their_slots() -> None:
    assert parse_queue("gpu=4") == ("gpu", 4)
    assert parse_queue("default") == ("default", None)
    assert queues_of([("gpu", 4), ("default", None)], 200, 0) == {"gpu": 4, "default": 200}
    assert queues_of([("gpu", None)], None, 3) == {"gpu": 3}  # without --slots: --prefetch
    assert queues_of(None, None, 5) is None  # today's single default queue
    assert queues_of(None, 8, 0) == {"default": 8}
    with pytest.raises(CliError):
        queues_of([("gpu", 1), ("gpu", 2)], None, 0)
    for bad in ("", "=3", "gpu=x", "gpu=-1", "a*b"):
        with pytest.raises(Exception, match=r"queue name|slots"):
            parse_queue(bad)


def test_a_worker_refuses_queues_it_cannot_consume() -> None:
    for bad in ({}, {"": 1}, {"gpu": -1}, {"gpu": True}):
        with pytest.raises(ValueError):
            _fleet.check_queues(bad)


def test_the_workers_request_has_one_subject_on_both_sides() -> None:
    assert controller_module.WORKERS_SUBJECT == _fleet.WORKERS_SUBJECT


# -- in one interpreter, both back ends --------------------------------------------------------------------------
def test_a_worker_reports_its_queues_slots_and_health(comm_factory: Any, names: dict[str, str]) -> None:
    worker_comm, client = comm_factory(), comm_factory()
    worker = process_comms.Worker(
        communicator=worker_comm, persister=InMemoryPersister(), queues={"default": 2, "gpu": 0}
    )
    with worker:
        health = worker.health()
        assert health == {
            "consuming": True,
            "queues": {"default": True, "gpu": True},
            "slots": {"default": {"used": 0, "total": 2}, "gpu": {"used": 0, "total": None}},
        }
        ctl = process_comms.RemoteProcessThreadController(client)
        found = ctl.list_workers(within=0.5).result(T)
        assert len(found) == 1
        info = found[0]
        assert info["worker"] == worker.worker_id and info["host"] == socket.gethostname()
        assert info["queues"] == {"default": True, "gpu": True} and info["uptime"] >= 0
        future = ctl.launch_process(
            Steps, init_kwargs={"inputs": {"n": 200, "delay": 0.05}}, persist=True, nowait=True, queue="gpu"
        )
        pid = future.result(T)
        wait_until(lambda: worker.health()["slots"]["gpu"]["used"] == 1, T, "the nowait launch to hold a gpu slot")
        assert ctl.kill_process(pid).result(T) is True
        wait_until(lambda: worker.health()["slots"]["gpu"]["used"] == 0, T, "the slot to be free again")
    assert worker.health()["consuming"] is False  # stopped


# -- workers in their own OS processes ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_task_on_a_named_queue_runs_only_on_its_workers(
    prefix: str, workers: Any, gpu_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    gpu = workers("--queue", "gpu=2", "--queue", "default=3")
    cpu = workers("--queue", "default=5")
    with controller(prefix) as ctl:
        listed = {info["pid"]: info for info in ctl.list_workers(within=1.0).result(T)}
        assert set(listed) == {gpu.proc.pid, cpu.proc.pid}
        assert listed[gpu.proc.pid]["slots"] == {"gpu": {"used": 0, "total": 2}, "default": {"used": 0, "total": 3}}
        assert listed[cpu.proc.pid]["slots"] == {"default": {"used": 0, "total": 5}}
        assert all(info["consuming"] and info["host"] == socket.gethostname() for info in listed.values())
        futures = [
            ctl.launch_process(
                Steps, init_kwargs={"inputs": {"n": 10, "delay": 0.1, "log": str(log)}}, persist=True, queue="gpu"
            )
            for _ in range(4)
        ]

        def gpu_slots_full() -> bool:
            info = {i["pid"]: i for i in ctl.list_workers(within=0.5).result(T)}
            return bool(info[gpu.proc.pid]["slots"]["gpu"]["used"] == 2)

        wait_until(gpu_slots_full, T, "the gpu worker's two slots in use")
        assert [f.result(60)["steps"] for f in futures] == [10] * 4
    assert {w for *_, w in steps_logged(log)} == {gpu.proc.pid}, "a gpu task ran on a worker without the gpu queue"


@pytest.mark.slow
def test_cli_workers_lists_a_cli_worker_with_its_queues(prefix: str, gpu_queue: str, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "process_comms.cli", "--broker", BROKER_URL, "--prefix", prefix]
    err = tmp_path / "worker.err"
    queues = ["--queue", "gpu=4", "--queue", "default", "--slots", "7"]
    with open(err, "w") as err_file:
        worker = subprocess.Popen(
            [*cli, "worker", "--persister", "memory://", "--allow", "tests.procs", *queues],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "worker ready", err.read_text()
        as_json = subprocess.run(
            [*cli, "workers", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        )
        (info,) = json.loads(as_json.stdout)
        assert info["pid"] == worker.pid and info["consuming"] is True
        assert info["slots"] == {"gpu": {"used": 0, "total": 4}, "default": {"used": 0, "total": 7}}
        human = subprocess.run(
            [*cli, "workers", "--within", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert human.returncode == 0, human.stderr
        header, row = human.stdout.strip().splitlines()
        assert header.split()[:3] == ["WORKER", "HOST", "PID"] and "gpu 0/4" in row and "consuming" in row
    finally:
        worker.terminate()
        assert worker.wait(30) == 0, err.read_text()
        if worker.stdout is not None:
            worker.stdout.close()


def test_the_workers_table_shows_slots_and_what_does_not_consume() -> None:
    assert workers_cli._queues_text({"slots": {"gpu": {"used": 1, "total": None}}}) == "gpu 1/-"
    assert workers_cli._health({"consuming": False, "queues": {"gpu": False, "default": True}}) == "not consuming: gpu"
