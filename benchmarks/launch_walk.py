"""The launch walk (CONTRIBUTING.md, "The worker: threads, loops and one launch"): the package files whose code
runs for one persisted launch, from ``RemoteProcessThreadController.launch_process`` until its outputs are back.

A worker runs in this interpreter with an in-memory persister, on exchanges and a task queue of its own; three
launches warm it up (first-use paths: the liveness token, the broadcast subscription, imports), then every
thread is traced through one launch and the half second after its reply (the record write, the route's
removal, the claim's release). Needs RabbitMQ (``PROCESS_COMMS_TEST_BROKER`` or 127.0.0.1:5672).

Usage::

    python benchmarks/launch_walk.py
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
import types
import uuid
from pathlib import Path

# ``python benchmarks/launch_walk.py`` puts benchmarks/ on sys.path, not the repository root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import process_comms
from process_comms.worker.persistence import InMemoryPersister
from process_comms.worker.worker import Worker

ROOT = Path(process_comms.__file__).resolve().parent
URL = os.environ.get("PROCESS_COMMS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672/")


def main() -> None:
    prefix = f"pc-walk-{uuid.uuid4().hex[:8]}"
    names = {
        "message_exchange": f"{prefix}.messages",
        "task_exchange": f"{prefix}.tasks",
        "task_queue": f"{prefix}.process.queue",
    }
    seen: set[str] = set()
    tracing = threading.Event()

    def tracer(frame: types.FrameType, _event: str, _arg: object) -> None:
        if tracing.is_set() and frame.f_code.co_filename.startswith(str(ROOT)):
            seen.add(frame.f_code.co_filename)

    threading.settrace(tracer)
    sys.settrace(tracer)
    worker = Worker(URL, persister=InMemoryPersister(), **names).start()
    try:
        controller = process_comms.RemoteProcessThreadController(process_comms.connect(URL, **names))

        def launch() -> None:
            inputs = {"inputs": {"a": 1, "b": 2}}
            controller.launch_process("tests.procs:Add", init_kwargs=inputs, persist=True).result(30)

        for _ in range(3):
            launch()
        time.sleep(1.0)  # the warm-up's after-reply steps end before the traced launch
        tracing.set()
        launch()
        time.sleep(0.5)  # the after-reply steps of the traced launch
        tracing.clear()
    finally:
        worker.stop()
    files = sorted(str(Path(name).relative_to(ROOT)) for name in seen)
    layers = collections.Counter(name.split(os.sep)[0] for name in files)
    for name in files:
        print(" ", name)
    print(len(files), "files:", ", ".join(f"{layer} {count}" for layer, count in sorted(layers.items())))


if __name__ == "__main__":
    main()
