"""`process-comms worker --gc-threshold` (cli/worker.py ``tuned_gc``): the collector is tuned only inside the
command, and given back as it was, so that a host that runs the command in its own interpreter keeps its own."""

from __future__ import annotations

import gc

from process_comms import defaults
from process_comms.cli.worker import freeze_start_up, tuned_gc


def test_the_worker_tunes_the_collector_and_gives_it_back() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with tuned_gc(defaults.WORKER_GC_THRESHOLD):
        assert gc.get_threshold() == (defaults.WORKER_GC_THRESHOLD, *before[1:])
        freeze_start_up(defaults.WORKER_GC_THRESHOLD)
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_threshold_of_0_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with tuned_gc(0):
        freeze_start_up(0)
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
