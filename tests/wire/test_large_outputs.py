"""What a user sees of large outputs, over the real broker, with the worker in its own OS process.

Before, outputs of more than ~50,000 values were written as block YAML, which the receiving side refuses
over 1 MiB: a process returning 300,000 ints left its caller with a DecodeError (tests/wire/test_codec_symmetry.py
has the codec-level cases). Now they arrive whole; outputs over the one message limit
(process_comms.defaults.MAX_MESSAGE_BYTES, 8 MiB) are refused by the worker's encoder, and the caller gets
an error that names the limit, not a message it cannot read.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import process_comms
from process_comms import defaults
from process_comms.worker.persistence import get_persister
from tests.faults._support import Workers, controller, prefix, workers  # noqa: F401 (fixtures)
from tests.procs import ManyInts

T = 60.0


def test_a_process_with_300000_int_outputs_reaches_its_caller(workers: Workers, prefix: str) -> None:  # noqa: F811
    workers()
    with controller(prefix) as ctl:
        outputs = ctl.launch_process(ManyInts, init_kwargs={"inputs": {"n": 300_000}}).result(T)
        assert outputs == {"values": list(range(300_000))}
        pid = ctl.launch_process(ManyInts, init_kwargs={"inputs": {"n": 300_000}}, nowait=True).result(T)
        assert ctl.wait_for_process(pid, timeout=T, poll_interval=0.2).result(T) == "finished"
        # the same outputs from the worker's record store, over the records RPC
        assert ctl.get_outputs(pid).result(T) == {"values": list(range(300_000))}
        assert pid in [row["pid"] for row in ctl.list_processes(limit=5000).result(T)]


def test_outputs_over_the_message_limit_give_the_caller_an_error_naming_it(
    workers: Workers,  # noqa: F811
    prefix: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    workers()
    n = defaults.MAX_MESSAGE_BYTES // 7  # ~9 bytes each: over the limit
    with controller(prefix) as ctl:
        with pytest.raises(process_comms.RemoteError, match=f"limit of {defaults.MAX_MESSAGE_BYTES} bytes"):
            ctl.launch_process(ManyInts, init_kwargs={"inputs": {"n": n}}).result(T)
        # the worker goes on
        assert ctl.launch_process(ManyInts, init_kwargs={"inputs": {"n": 3}}).result(T) == {"values": [0, 1, 2]}


def test_list_processes_of_5000_records_reaches_its_caller(workers: Workers, prefix: str) -> None:  # noqa: F811
    now = time.time()
    records = [
        {
            "pid": uuid.uuid4(),
            "class": "tests.procs:Add",
            "inputs": {"a": n, "b": 1},
            "state_name": "finished",
            "paused": False,
            "status": None,
            "progress": {},
            "outputs": {"sum": n + 1},
            "host": {"hostname": "elsewhere", "pid": 1},
            "ctime": now - n,
            "mtime": now - n,
        }
        for n in range(5000)
    ]
    with get_persister(workers.persister) as store:  # what a fleet wrote before: the worker lists it
        store.save_records(records)
    workers()
    with controller(prefix) as ctl:
        listed = ctl.list_processes(limit=5000).result(T)
    assert len(listed) == 5000  # before: ~940 kB of block YAML, refused by the client (DecodeError)
    assert [row["pid"] for row in listed] == [r["pid"] for r in records]
