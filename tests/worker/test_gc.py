"""The garbage collector of a worker process (process_comms/worker/worker.py, ``tune_gc``): the CLI tunes it
once started, ``--no-tune-gc`` keeps CPython's defaults, and a library ``Worker`` never touches its host's.
Each check runs in a fresh interpreter, so the test process's own collector is never changed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from process_comms.worker.worker import GC_THRESHOLDS
from tests.cli.test_commands import CLI, READY_TIMEOUT, ROOT, STOP_TIMEOUT, LineReader, _env, _global_options
from tests.store_fleet import PROCS

#: Seconds for a fresh interpreter to import the package, start an embedded worker and answer.
SUBPROCESS_TIMEOUT = 60


def _python(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_tune_gc_freezes_start_up_and_sets_the_worker_thresholds() -> None:
    answer = _python(
        "import gc, json; from process_comms.worker.worker import tune_gc; before = gc.get_threshold();"
        " frozen = tune_gc(); print(json.dumps({'before': before, 'after': gc.get_threshold(), 'frozen': frozen,"
        " 'count': gc.get_freeze_count()}))"
    )
    assert answer["after"] == list(GC_THRESHOLDS) != answer["before"]
    assert isinstance(answer["frozen"], int) and answer["frozen"] > 1000  # the package's modules and classes
    assert answer["count"] == answer["frozen"]


def test_a_library_worker_leaves_its_hosts_collector_alone() -> None:
    answer = _python(
        "import gc, json; from process_comms import Worker; before = (gc.get_threshold(), gc.get_freeze_count());"
        " w = Worker(persister='memory://').start(); w.stop(graceful=False);"
        " print(json.dumps({'before': before, 'after': (gc.get_threshold(), gc.get_freeze_count())}))"
    )
    assert answer["after"] == answer["before"]


def _cli_worker_log(broker_url: str, names: dict[str, str], tmp_path: Path, *extra: str) -> str:
    err_path = tmp_path / "worker.err"
    with open(err_path, "w") as err:
        worker = subprocess.Popen(
            [*CLI, *_global_options(broker_url, names), "worker", "--persister", "memory://", "--allow", PROCS, *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=_env(),
        )
    try:
        assert worker.stdout is not None
        assert LineReader(worker.stdout).next(READY_TIMEOUT) == "worker ready", err_path.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=STOP_TIMEOUT) == 0, err_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=STOP_TIMEOUT)
        if worker.stdout is not None:
            worker.stdout.close()
    return err_path.read_text()


@pytest.mark.broker
def test_the_cli_worker_tunes_its_collector_unless_told_not_to(
    broker_url: str, names: dict[str, str], tmp_path: Path
) -> None:
    tuned = _cli_worker_log(broker_url, names, tmp_path)
    assert f"garbage collector tuned for a worker: thresholds {GC_THRESHOLDS}" in tuned, tuned
    untouched = _cli_worker_log(broker_url, names, tmp_path, "--no-tune-gc")
    assert "garbage collector tuned" not in untouched, untouched
